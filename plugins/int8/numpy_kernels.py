"""cpu:numpy linear for q8_0 weights: dequantize a block of rows into float32, multiply,
move on. Blocks of about 1 MiB keep the temporary in cache and the work in BLAS."""

BLOCK_BYTES = 1 << 20


def linear(out, x, w):
    q, s = w.parts["q"], w.parts["s"]
    n, k = q.shape
    groups = s.shape[1]
    rows = max(1, BLOCK_BYTES // (4 * k))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = q[start:stop].reshape(stop - start, groups, k // groups) * s[start:stop, :, None]
        out[:, start:stop] = x @ block.reshape(stop - start, k).T   # BLAS needs a dense out
