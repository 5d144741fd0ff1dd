"""The next token on the GPU: `argmax`, and `sample` exactly as core.reference.sample defines it.

Tokens are ranked by a distinct int64 order key (logit descending, then token id
ascending: the reference's stable sort), so the argmax is the largest key, and every rule
of the sampler keeps a prefix of that order.

Both ops read the vocabulary in parallel, a program per CHUNK of logits, and the last
program to finish (an atomic counter tells) combines the chunks' results. One program
walking a 128k vocabulary took 12 us for the argmax and, with the default sampling
settings, 3.5 ms for a sampled token.

For sampling, each chunk hands the merge its CANDIDATES largest keys (a bisection on the
logits finds the cut), its largest logit and its softmax mass. Every token whose key
reaches the largest of the chunks' smallest handed keys is among the candidates, so the
merge knows that prefix of the global order exactly; it sorts the first SORTED of it. When
the rules (top-k, top-p, min-p) cut the order inside that prefix, or the inverse-CDF draw
lands inside it, the merge answers from it: always with a top-k up to CANDIDATES (40 and 50
are the usual defaults). Otherwise (a flat distribution, little truncation) it leaves the
token to a second kernel that searches the whole vocabulary, a radix select per rule: each
pass, every program histograms (count and weight) the next DIGIT bits of the keys in its
slice that match the bits settled so far, and the last to arrive settles those bits. On a
GPU one launch runs every pass, its programs waiting for each pass's digit. The launch is
cooperative: the driver runs every program at once or refuses the launch, so no program
waits on one that cannot start. The interpreter, which runs programs one after another,
launches a pass at a time. Weights are float32, summed in float64: only a u within float32
rounding of the boundary between two tokens can pick the neighbour the float64 reference
would not.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import interpreting, multiprocessors, pdl_enabled
from .kernels import LOG2E, pdl_start

CHUNK = 4096              # logits per program
CANDIDATES = 64           # keys each chunk hands to the sampling merge
SORTED = 512              # of those, the most the merge sorts
WARPS = 8                 # per sampling program
SEARCH_WARPS = 4          # per search program (measured faster than 8)
DIGIT = tl.constexpr(4)   # key bits the whole-vocabulary search settles per pass
BUCKETS = tl.constexpr(16)        # 2**DIGIT
SEARCHES = 3              # top-k, top-p, the draw
SEARCH_SUB = 512          # logits per step of a search program's histogram
_workspaces: dict = {}    # never freed: graphs hold them
_search_workspaces: dict = {}    # the same
_key_workspaces: dict = {}       # the same


def _sizes(V):
    """(chunk, candidates, sorted) for a vocabulary of V: small ones under the interpreter,
    so that tests there split a small vocabulary into several chunks."""
    chunk, cand, sort = (64, 8, 16) if interpreting() else (CHUNK, CANDIDATES, SORTED)
    return max(min(chunk, triton.next_power_of_2(V)), cand), cand, sort


def _workspace(device, op, rows, n_keys, n_floats):
    """Keys and floats the chunks hand over, and an arrival counter per row (the merging
    program resets it)."""
    key = (str(device), op, rows, n_keys, n_floats)
    if key not in _workspaces:
        _workspaces[key] = (torch.empty(rows * n_keys, dtype=torch.int64, device=device),
                            torch.empty(max(1, rows * n_floats), dtype=torch.float32,
                                        device=device),
                            torch.zeros(rows, dtype=torch.int32, device=device))
    return _workspaces[key]


@triton.jit
def _order(x):
    """An int32 monotone in the float32 x, equal for -0.0 and 0.0 (they tie, as in numpy)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = tl.where(bits == -2147483648, 0, bits)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def id_bits(V):
    """IDB: the bits an order key gives the token id, for a vocabulary of V."""
    return max(1, (V - 1).bit_length())


@triton.jit
def _order_key(x, idx, IDB: tl.constexpr, DROP: tl.constexpr):
    """Order key of logit x at token idx; DROP low bits of the logit's order left out (the
    same in every logit stored in 16 bits: fewer bits for the search to settle)."""
    order = (_order(x) >> DROP).to(tl.int64) + (1 << (31 - DROP))
    return (order << IDB) | ((1 << IDB) - 1 - idx).to(tl.int64)


@triton.jit
def _token(key, IDB: tl.constexpr):
    return ((1 << IDB) - 1 - (key & ((1 << IDB) - 1))).to(tl.int32)


@triton.jit
def _chunk_keys(x_ptr, c, V, IDB: tl.constexpr, CHUNK: tl.constexpr):
    """Chunk c's logits (float32, -inf past V) and their order keys (-1 past V, below all)."""
    idx = c * CHUNK + tl.arange(0, CHUNK)
    x = tl.load(x_ptr + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
    return x, tl.where(idx < V, _order_key(x, idx, IDB, 0), -1)


@triton.jit
def _argmax_kernel(out_ptr, x_ptr, key_ptr, cnt_ptr, V, s_x, IDB: tl.constexpr,
                   CHUNK: tl.constexpr, P2: tl.constexpr, PDL: tl.constexpr):
    """Program (row, chunk): the chunk's largest key; the row's last program picks."""
    t, c, P = tl.program_id(0), tl.program_id(1), tl.num_programs(1)
    pdl_start(PDL)
    _, keys = _chunk_keys(x_ptr + t * s_x, c, V, IDB, CHUNK)
    tl.store(key_ptr + t * P + c, tl.max(keys, axis=0))
    tl.debug_barrier()                            # the store before the release
    if tl.atomic_add(cnt_ptr + t, 1, sem="acq_rel") == P - 1:
        pc = tl.arange(0, P2)
        best = tl.load(key_ptr + t * P + pc, mask=pc < P, other=-1, cache_modifier=".cg")
        tl.store(out_ptr + t, _token(tl.max(best, axis=0), IDB))
        tl.store(cnt_ptr + t, 0)                  # ready for the next step


def argmax(out, logits):
    T, V = logits.shape
    assert logits.stride(1) == 1
    chunk, _, _ = _sizes(V)
    P = triton.cdiv(V, chunk)
    keys, _, cnt = _workspace(out.device, "argmax", T, P, 0)
    pdl = pdl_enabled(out.device)
    _argmax_kernel[(T, P)](out, logits, keys, cnt, V, logits.stride(0),
                           IDB=id_bits(V), CHUNK=chunk,
                           P2=triton.next_power_of_2(P), PDL=pdl, num_warps=8, launch_pdl=pdl)


def argmax_key(device):
    """The largest order key a GEMV's programs have offered (linear.rmsnorm_linear_argmax), -1
    between picks: pick_key resets it."""
    key = str(device)
    if key not in _key_workspaces:
        _key_workspaces[key] = torch.full((1,), -1, dtype=torch.int64, device=device)
    return _key_workspaces[key]


@triton.jit
def _pick_key_kernel(out_ptr, key_ptr, IDB: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    tl.store(out_ptr, _token(tl.load(key_ptr, cache_modifier=".cg"), IDB))
    tl.store(key_ptr, -1)


def pick_key(out, key, V):
    """out[0] = the token of the offered key, which is reset for the next pick."""
    pdl = pdl_enabled(out.device)
    _pick_key_kernel[(1,)](out, key, IDB=id_bits(V), PDL=pdl, num_warps=1,
                           launch_pdl=pdl)


# ---------------------------------------------------------------- whole-vocabulary search


@triton.jit
def _searches(p, top_k, top_p, V, DP: tl.constexpr):
    """Whether pass p belongs to a search these settings ask for (the same in every program)."""
    search = p // DP
    return ((search == 0) & (top_k > 0) & (top_k < V)) | ((search == 1) & (top_p < 1.0)) | \
        (search == 2)


@triton.jit
def _search_pass(x_ptr, st_ptr, fl_ptr, part_ptr, cnt_ptr, out_ptr, coef, top_k, top_p, min_p,
                 u, V, p, c, S, IDB: tl.constexpr, DROP: tl.constexpr, DP: tl.constexpr,
                 CHUNK: tl.constexpr, SUB: tl.constexpr, S2: tl.constexpr):
    """Pass p of the radix search: search p // DP (top-k, top-p, the draw) settles digit
    p % DP of its key. Each program histograms its slice's tokens that match the digits
    settled so far (count and weight per digit value); the last to arrive picks the digit,
    publishes it and returns True."""
    search, j = p // DP, p % DP
    emin = tl.where(search == 2, tl.minimum(tl.maximum(min_p, 0.0), 1.0), 0.0)
    prefix = tl.load(st_ptr + 1, volatile=True)
    prefix = tl.where(j == 0, 0, prefix)      # a search starts with no bits settled
    lo = tl.load(st_ptr + 2, volatile=True)
    lmax = tl.load(fl_ptr + 2, volatile=True).to(tl.float32)
    shift = (DP - 1 - j) * DIGIT
    digits = tl.arange(0, BUCKETS)
    n = tl.zeros([SUB, BUCKETS], tl.int32)        # per thread: summed across once, at the end
    w = tl.zeros([SUB, BUCKETS], tl.float64)
    for s0 in range(0, CHUNK, SUB):
        # [SUB, 1] columns, in the histogram's layout: no shuffles through shared memory
        idx = c * CHUNK + s0 + tl.arange(0, SUB)[:, None]
        x = tl.load(x_ptr + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
        key = _order_key(x, idx, IDB, DROP)
        e = tl.exp2((x - lmax) * coef)
        keep = (idx < V) & (key >= lo) & (e >= emin) & \
            ((key >> (shift + DIGIT)) == (prefix >> (shift + DIGIT)))
        hit = (((key >> shift) & (BUCKETS - 1)) == digits[None, :]) & keep
        n += hit.to(tl.int32)
        w += tl.where(hit, e.to(tl.float64), 0.0)
    mine = part_ptr + c * (2 * BUCKETS)
    tl.store(mine + digits, tl.sum(n, axis=0).to(tl.float64))
    tl.store(mine + BUCKETS + digits, tl.sum(w, axis=0))
    tl.debug_barrier()                        # every thread's stores before the release
    last = tl.atomic_add(cnt_ptr, 1, sem="acq_rel") == S - 1
    if last:
        pc = tl.arange(0, S2)
        rows = part_ptr + pc[:, None] * (2 * BUCKETS) + digits[None, :]
        counts = tl.sum(tl.load(rows, mask=(pc < S)[:, None], other=0.0,
                                cache_modifier=".cg"), axis=0)
        weights = tl.sum(tl.load(rows + BUCKETS, mask=(pc < S)[:, None], other=0.0,
                                 cache_modifier=".cg"), axis=0)
        got = tl.where(search == 0, counts, weights)
        above = tl.load(fl_ptr, volatile=True)
        need = tl.load(fl_ptr + 1, volatile=True)
        if j == 0:                            # the tokens this search ranks: all of them
            above = tl.full([], 0.0, tl.float64)
            frac = tl.where(search == 1, top_p, u).to(tl.float64)
            need = tl.where(search == 0, top_k.to(tl.float64), frac * tl.sum(got, axis=0))
        # the prefix weight down to each digit value: with what the settled digits rank
        reach = above + tl.sum(got, axis=0) - tl.cumsum(got, axis=0) + got
        ok = tl.where(search == 2, reach > need, reach >= need) & (counts > 0)
        d = tl.max(tl.where(ok, digits, -1), axis=0)
        if d < 0:       # float64 sums in another order fell short: the last kept token
            d = tl.min(tl.where(counts > 0, digits, BUCKETS), axis=0)
        tl.store(fl_ptr, above + tl.sum(tl.where(digits > d, got, 0.0), axis=0))
        tl.store(fl_ptr + 1, need)
        prefix = prefix | (d.to(tl.int64) << shift)
        tl.store(st_ptr + 1, prefix)
        if j == DP - 1:                       # the key is settled
            if search == 2:
                tl.store(out_ptr, _token(prefix, IDB))
            else:                             # the next search's cut
                tl.store(st_ptr + 2, prefix)
        tl.store(cnt_ptr, 0)
    return last


@triton.jit
def _search_kernel(out_ptr, x_ptr, params_ptr, u_ptr, st_ptr, fl_ptr, part_ptr, cnt_ptr, V,
                   first, IDB: tl.constexpr, DROP: tl.constexpr, DP: tl.constexpr,
                   PASSES: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr,
                   S2: tl.constexpr, BARRIER: tl.constexpr, PDL: tl.constexpr):
    """Passes first.. first+PASSES-1 of the radix search, when the sampling merge left the
    token to it (st[0]). With BARRIER, the programs (all resident: at most one per
    multiprocessor) wait for each pass's digit; without, each launch runs one pass."""
    c, S = tl.program_id(0), tl.num_programs(0)
    pdl_start(PDL)
    if tl.load(st_ptr, volatile=True) != 0:
        coef = LOG2E / tl.load(params_ptr)
        top_k = tl.load(params_ptr + 1).to(tl.int32)
        top_p = tl.load(params_ptr + 2)
        min_p = tl.load(params_ptr + 3)
        u = tl.load(u_ptr)
        for p in range(first, first + PASSES):
            if _searches(p, top_k, top_p, V, DP):
                gen = tl.atomic_add(st_ptr + 3, 0, sem="acquire")
                if _search_pass(x_ptr, st_ptr, fl_ptr, part_ptr, cnt_ptr, out_ptr, coef, top_k,
                                top_p, min_p, u, V, p, c, S, IDB, DROP, DP, CHUNK, SUB, S2):
                    tl.debug_barrier()            # the digit's stores before the release
                    tl.atomic_add(st_ptr + 3, 1, sem="release")
                elif BARRIER:
                    while tl.atomic_add(st_ptr + 3, 0, sem="acquire") == gen:
                        pass
                tl.debug_barrier()                # the digit, seen by every thread


# ---------------------------------------------------------------- sampling


@triton.jit
def _first(cond, rank, none):
    """The smallest rank where cond holds, else `none`."""
    return tl.min(tl.where(cond, rank, none), axis=0)


@triton.jit
def _bisect(v, lo, hi, most, BITS: tl.constexpr):
    """The smallest t in (lo, hi] with at most `most` values of v above it, given that hi
    has at most `most` above it, lo more, and hi - lo <= 2**BITS."""
    for _ in range(BITS):
        mid = lo + (hi - lo) // 2
        ok = tl.sum((v > mid).to(tl.int32), axis=0) <= most
        hi = tl.where(ok, mid, hi)
        lo = tl.where(ok, lo, mid)
    return hi


@triton.jit
def _hand_over(dst_ptr, x, keys, CAND: tl.constexpr):
    """Store the chunk's CAND largest keys at dst_ptr, in no order (-1 fills the rest of a
    short chunk): a bisection on the logits' order finds the CAND-th largest logit, and ties
    at it go in by token id, as the keys rank them."""
    valid = keys >= 0
    o = tl.where(valid, _order(x), -2147483648).to(tl.int64)   # padding: below every logit
    t = _bisect(o, tl.min(o, axis=0) - 1, tl.max(o, axis=0), CAND, 32)
    above = valid & (o > t)
    tie = valid & (o == t)
    room = CAND - tl.sum(above.to(tl.int32), axis=0)
    take = above | (tie & (tl.cumsum(tie.to(tl.int32), axis=0) <= room))
    if tl.sum(valid.to(tl.int32), axis=0) <= CAND:
        take = valid
    tl.store(dst_ptr + tl.arange(0, CAND), tl.full([CAND], -1, tl.int64))
    tl.debug_barrier()                            # the fill lands before the keys
    tl.store(dst_ptr + tl.cumsum(take.to(tl.int32), axis=0) - 1, keys, mask=take)


@triton.jit
def _merge_sample(x_ptr, params_ptr, u_ptr, cand_ptr, part_ptr, V, P, IDB: tl.constexpr,
                  CAND: tl.constexpr, P2: tl.constexpr, SORTED: tl.constexpr):
    """The sampled token from the chunks' candidates, or -1 when they do not decide it;
    and the largest logit."""
    temp = tl.load(params_ptr)
    top_k = tl.load(params_ptr + 1).to(tl.int32)
    top_p = tl.load(params_ptr + 2)
    min_p = tl.load(params_ptr + 3)
    u = tl.load(u_ptr)
    pc = tl.arange(0, P2)
    handed = tl.load(cand_ptr + pc[:, None] * CAND + tl.arange(0, CAND)[None, :],
                     mask=(pc < P)[:, None], other=-1, cache_modifier=".cg")
    floor = tl.max(tl.min(handed, axis=1), axis=0)   # every key from here up was handed
    handed = tl.reshape(handed, [P2 * CAND])
    tok = _token(tl.max(handed, axis=0), IDB)
    lmax = tl.full([], 0.0, tl.float32)          # the largest logit, when temp > 0 needs it
    if temp > 0:
        known = (handed >= floor) & (handed >= 0)
        if tl.sum(known.to(tl.int32), axis=0) > SORTED:  # keep the SORTED largest of them
            top = _bisect(handed, floor - 1, tl.max(handed, axis=0), SORTED, 33 + IDB)
            known = handed > top
        sorted_ptr = cand_ptr + P * CAND          # a scratch row after the chunks' keys
        tl.store(sorted_ptr + tl.arange(0, SORTED), tl.full([SORTED], -1, tl.int64))
        tl.debug_barrier()
        tl.store(sorted_ptr + tl.cumsum(known.to(tl.int32), axis=0) - 1, handed, mask=known)
        tl.debug_barrier()
        keys = tl.sort(tl.load(sorted_ptr + tl.arange(0, SORTED), cache_modifier=".cg"),
                       descending=True)
        coef = LOG2E / temp
        ms = tl.load(part_ptr + 2 * pc, mask=pc < P, other=float("-inf"), cache_modifier=".cg")
        ss = tl.load(part_ptr + 2 * pc + 1, mask=pc < P, other=0.0, cache_modifier=".cg")
        lmax = tl.max(ms, axis=0)
        total = tl.sum(tl.where(ss > 0, ss * tl.exp2((ms - lmax) * coef), 0.0).to(tl.float64),
                       axis=0)
        rank = tl.arange(0, SORTED)
        exact = keys >= 0                         # a prefix of the global order
        n = tl.sum(exact.to(tl.int32), axis=0)
        ids = _token(keys, IDB)
        x = tl.load(x_ptr + ids, mask=exact, other=float("-inf")).to(tl.float32)
        e = tl.where(exact, tl.exp2((x - lmax) * coef), 0.0).to(tl.float64)
        cum = tl.cumsum(e, axis=0)
        beyond = V + 1                            # a cut somewhere past the exact prefix
        cut_k = tl.where((top_k > 0) & (top_k < V), top_k, V)
        cut = cut_k
        mass_exact = (cut == V) | (cut <= n)
        mass = tl.where(cut == V, total, tl.sum(tl.where(rank < cut, e, 0.0), axis=0))
        if top_p < 1.0:
            cut = tl.minimum(cut, _first(exact & (cum >= top_p * mass), rank + 1, beyond))
        if min_p > 0.0:
            emin = tl.minimum(min_p, 1.0)
            cut = tl.minimum(cut, tl.maximum(_first(exact & (e < emin), rank, beyond), 1))
        if (cut <= n) & (mass_exact | (top_p >= 1.0)):     # every kept token is exact
            kept = tl.sum(tl.where(rank < cut, e, 0.0), axis=0)
            i = _first(exact & (rank < cut) & (cum > u * kept), rank, cut - 1)
        else:
            # The kept tokens reach past the exact prefix. Their mass lies between bounds
            # (a token past it weighs at most the last exact one); if the draw picks the
            # same exact token at both, that is the token.
            last = tl.max(cum, axis=0)
            e_floor = tl.min(tl.where(exact, e, float("inf")), axis=0)
            lo = last
            if (cut_k == V) & (min_p <= 0.0):     # only top-p cuts, if anything
                lo = tl.maximum(last, tl.where(top_p < 1.0, top_p * mass, total))
            hi = total
            if cut_k < V:
                hi = tl.minimum(hi, last + (cut_k - n).to(tl.float64) * e_floor)
            if top_p < 1.0:
                hi = tl.minimum(hi, top_p * mass + e_floor)
            i = _first(exact & (cum > u * lo), rank, beyond)
            bounded = (cut > n) & (mass_exact | (top_p >= 1.0))
            if (~bounded) | (i != _first(exact & (cum > u * hi), rank, beyond)):
                i = beyond
        tok = tl.where(i < beyond, tl.sum(tl.where(rank == i, ids, 0), axis=0), -1)
    return tok, lmax


@triton.jit
def _sample_kernel(out_ptr, x_ptr, params_ptr, u_ptr, cand_ptr, part_ptr, cnt_ptr, st_ptr,
                   fl_ptr, V, IDB: tl.constexpr, CHUNK: tl.constexpr, CAND: tl.constexpr,
                   P2: tl.constexpr, SORTED: tl.constexpr, PDL: tl.constexpr):
    """Program c: chunk c's CAND largest keys, largest logit and softmax mass; the last
    program merges, or leaves the token to the search (st[0])."""
    c, P = tl.program_id(0), tl.num_programs(0)
    pdl_start(PDL)
    temp = tl.load(params_ptr)
    x, keys = _chunk_keys(x_ptr, c, V, IDB, CHUNK)
    _hand_over(cand_ptr + c * CAND, x, keys, CAND)
    m = tl.max(x, axis=0)
    coef = LOG2E / tl.where(temp > 0, temp, 1.0)
    tl.store(part_ptr + 2 * c, m)
    shift = tl.where(m > float("-inf"), m, 0.0)   # a chunk of -inf logits weighs 0
    tl.store(part_ptr + 2 * c + 1, tl.sum(tl.exp2((x - shift) * coef), axis=0))
    tl.debug_barrier()                            # every thread's stores before the release
    if tl.atomic_add(cnt_ptr, 1, sem="acq_rel") == P - 1:
        tok, lmax = _merge_sample(x_ptr, params_ptr, u_ptr, cand_ptr, part_ptr, V, P, IDB,
                                  CAND, P2, SORTED)
        tl.store(out_ptr, tok)
        tl.store(st_ptr, (tok < 0).to(tl.int64))
        tl.store(st_ptr + 2, 0)                   # no cut yet
        tl.store(fl_ptr + 2, lmax.to(tl.float64))
        tl.store(cnt_ptr, 0)                      # ready for the next step


def _search_workspace(device, programs):
    """The search's state (int64: handed over, settled key bits, cut, pass generation;
    float64: weight above the settled bits, the weight sought, largest logit), the
    programs' histograms and an arrival counter (the last arrival resets it)."""
    key = (str(device), programs)
    if key not in _search_workspaces:
        _search_workspaces[key] = (
            torch.zeros(4, dtype=torch.int64, device=device),
            torch.zeros(3, dtype=torch.float64, device=device),
            torch.empty(programs * 2 * BUCKETS, dtype=torch.float64, device=device),
            torch.zeros(1, dtype=torch.int32, device=device))
    return _search_workspaces[key]


def _search_grid(device, V):
    """(programs, logits per program, logits per histogram step) of the search: a program
    per multiprocessor at most, since they wait on each other and so must all be resident
    (the launch is cooperative, which the driver checks)."""
    sub = 64 if interpreting() else SEARCH_SUB
    programs = min(multiprocessors(device), triton.cdiv(V, sub))
    span = triton.cdiv(triton.cdiv(V, programs), sub) * sub
    return triton.cdiv(V, span), span, sub


def sample(out, logits, params, u):
    V = logits.shape[-1]
    assert logits.stride(-1) == 1
    chunk, cand, sort = _sizes(V)
    P = triton.cdiv(V, chunk)
    keys, part, cnt = _workspace(out.device, "sample", 1, P * cand + sort, 2 * P)
    programs, span, sub = _search_grid(out.device, V)
    st, fl, hist, arrivals = _search_workspace(out.device, programs)
    idb = id_bits(V)
    pdl = pdl_enabled(out.device)
    _sample_kernel[(P,)](out, logits, params, u, keys, part, cnt, st, fl, V, IDB=idb,
                         CHUNK=chunk, CAND=cand, P2=triton.next_power_of_2(P), SORTED=sort,
                         PDL=pdl, num_warps=WARPS, launch_pdl=pdl)
    drop = {torch.bfloat16: 16, torch.float16: 13}.get(logits.dtype, 0)
    digits = triton.cdiv(32 - drop + idb, int(DIGIT))
    passes = [(p, 1) for p in range(SEARCHES * digits)] if interpreting() else \
        [(0, SEARCHES * digits)]                  # the interpreter runs programs in turn
    for first, count in passes:
        _search_kernel[(programs,)](
            out, logits, params, u, st, fl, hist, arrivals, V, first, IDB=idb, DROP=drop,
            DP=digits, PASSES=count, CHUNK=span, SUB=sub, S2=triton.next_power_of_2(programs),
            BARRIER=not interpreting(), PDL=pdl, num_warps=SEARCH_WARPS, launch_pdl=pdl,
            launch_cooperative_grid=not interpreting())
