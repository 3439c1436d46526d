"""Small integer statistics over preallocated arrays (no allocation): in-place insertion sort,
median, median absolute deviation, integer square root. Used once per report (1 Hz), never per
sample."""


def sort(a, m):
    """Sort ``a[0:m]`` in place (insertion sort: m ≤ 32 here)."""
    for i in range(1, m):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


def median_sorted(a, m):
    """Median of the sorted ``a[0:m]`` (m ≥ 1); the mean of the middle two for even m."""
    h = m >> 1
    if m & 1:
        return a[h]
    return (a[h - 1] + a[h]) >> 1


def mad(a, m, med, tmp):
    """Median absolute deviation of ``a[0:m]`` from ``med``, using ``tmp`` (length ≥ m) as scratch."""
    for i in range(m):
        d = a[i] - med
        tmp[i] = d if d >= 0 else -d
    sort(tmp, m)
    return median_sorted(tmp, m)


def isqrt(v):
    """Floor of the square root of the int ``v`` (0 for ``v`` <= 0), by Newton's method on ints."""
    if v <= 0:
        return 0
    g = v
    r = (g + 1) >> 1
    while r < g:
        g = r
        r = (g + v // g) >> 1
    return g
