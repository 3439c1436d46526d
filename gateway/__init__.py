"""nabd-gateway: verifies readings, files them into patient records (FHIR R4), feeds the observatory."""
