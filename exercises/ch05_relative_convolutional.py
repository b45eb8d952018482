"""Chapter 05 exercises: Relative convolutional attention (RCMHA).

Fill in each function, then grade your work from the repository's root with

    attnbook grade 05

or, in a notebook, ``check("ch05.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.relative_convolutional (it solves these).
"""

from torch import Tensor


def causal_dwconv(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """A causal depth-wise convolution along the sequence: q~_{t,c} = sum_tau w_{c,tau} x_{t-tau,c} + b_c.

    The same taps serve every head; tokens before the first one count as zeros.

    Args:
        x: (B, H, N, d) queries, keys or values of each head, float32 or float64.
        w: (d, k) taps per channel: w[:, 0] weighs the current token, w[:, tau] the token tau back.
        b: (d,) bias per channel.

    Returns:
        (B, H, N, d) in x's dtype; output t depends only on tokens <= t.
    """
    raise NotImplementedError("ch05.causal_dwconv")


def relative_scores(q: Tensor, k: Tensor, r: Tensor, beta: Tensor, u: Tensor) -> Tensor:
    """RCMHA's scores ((q_i + u_h) . k_j + q_i . r_{h,P+j-p_i} + beta_{h,P+j-p_i}) / sqrt(d), unmasked.

    The N queries are the last N of the M key positions: query i sits at p_i = i + M - N.

    Args:
        q: (B, H, N, d) queries.
        k: (B, H, M, d) keys, N <= M <= P.
        r: (H, 2P, d) one vector per head and offset (the book's k^rel_h(p_i - j)); offset
            delta = j - p_i (key minus query) at row P + delta.
        beta: (H, 2P) one scalar per head and offset (the book's b_h(p_i - j)), same rows.
        u: (H, d) one content bias per head (the book's b^q_h).

    Returns:
        (B, H, N, M) scores in q's dtype.
    """
    raise NotImplementedError("ch05.relative_scores")


def rel_shift(x: Tensor, M: int) -> Tensor:
    """The shift trick: move scores computed per OFFSET into per-KEY place, without a gather.

    Query i is the i-th of the last N of M positions, p_i = i + M - N. Column c of x holds the
    score of offset delta = c - (M - 1), delta running over -(M - 1) ... N - 1. The answer puts at
    (i, j) the score of offset j - p_i:

        out[..., i, j] = x[..., i, (j - p_i) + M - 1]

    Do it with padding and reshapes only (pad one zero column on the right, flatten the last two
    dimensions, skip the first N - 1 elements, read rows of width M + N - 1 and keep M columns);
    check your answer against an explicit loop on a small example.

    Args:
        x: (..., N, M + N - 1) float64 scores by offset, N <= M.
        M: the number of keys.

    Returns:
        (..., N, M), same dtype; exactly equal (no rounding) to the gather above.
    """
    raise NotImplementedError("ch05.rel_shift")


def length_drop(variant: str, seed: int) -> float:
    """Experiment: how much accuracy does a model lose beyond its training length?

    Recipe (section 4 of the chapter, scaled down):

    1. ``model = train_stream(variant, seed, N=16, steps=60, D=16, H=2, lr=2e-2)`` from
       attnbook.mechanisms.relative_convolutional (it seeds, builds the model with the given
       attention variant, "MHA", "conv", "relative" or "RCMHA", and trains it on 16-token streams).
    2. Draw a test batch of 2N = 32-token streams:
       ``markov_period(400, 32, generator=torch.Generator().manual_seed(1000 + seed))``
       (attnbook.tasks).
    3. Under ``torch.no_grad()``, predict ``model(test.tokens).argmax(-1)`` and compare with
       ``test.targets``: a (400, 32) tensor of right/wrong.

    Returns:
        accuracy over positions 0 … N-1 minus accuracy over positions N … 2N-1, a float (a fraction,
        not percent). The grader runs the recipe itself on three seeds and accepts your value for
        "MHA" and for "relative" within mean ± max(4 std, 0.08) of its own runs.
    """
    raise NotImplementedError("ch05.length_drop")
