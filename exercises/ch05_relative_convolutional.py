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
        r: (H, 2P, d) one vector per head and offset; offset delta = j - p_i at row P + delta.
        beta: (H, 2P) one scalar per head and offset, same rows.
        u: (H, d) one content bias per head.

    Returns:
        (B, H, N, M) scores in q's dtype.
    """
    raise NotImplementedError("ch05.relative_scores")
