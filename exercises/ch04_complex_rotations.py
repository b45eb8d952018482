"""Chapter 04 exercises: RoPE as a complex rotation, and adaptive (Euler) rotations.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 04

or, in a notebook, ``check("ch04.<function name>", your_function)`` from attnbook.grading.
Use only torch. Conventions of the whole chapter:

- pairs are INTERLEAVED: pair j of a vector x of even width d is the complex number
  x[..., 2j] + i·x[..., 2j+1], j = 0 ... d/2 - 1 (not the half-split (j, j + d/2) layout);
- pos (N,) holds the positions of the N tokens (integers, not necessarily 0 ... N-1);
- theta (d/2,) holds one frequency per pair; use it as given.
"""

from torch import Tensor


def rope(x: Tensor, pos: Tensor, theta: Tensor) -> Tensor:
    """Rotary position embedding as a complex multiplication.

    Args:
        x: (..., N, d), float32 or float64, d even (e.g. (B, H, N, d)).
        pos: (N,) int64 positions.
        theta: (d/2,) frequencies, same dtype as x.

    Returns:
        (..., N, d), same dtype as x: pair j of token m multiplied by e^{i pos[m] θ_j},
        i.e. (r, p) -> (r cos a - p sin a, r sin a + p cos a) with a = pos[m]·θ_j, written back
        in the interleaved layout.
    """
    raise NotImplementedError("ch04.rope")


def euler_rotate(x: Tensor, pos: Tensor, theta: Tensor, delta, bias, eps: float = 1e-12) -> Tensor:
    """Adaptive rotation in polar (Euler) form, for one side: queries (with their bias) or keys.

    For every pair (r, p) of token m:
        λ = sqrt(r² + p² + eps)           (eps keeps the gradient finite at r = p = 0)
        φ = atan2(p, r)                    (the semantic angle, in (-π, π])
        angle = δ·φ + pos[m]·θ_j + b       (δ scales φ only, not the position angle)
        output pair = (λ cos(angle), λ sin(angle))

    Args:
        x: (..., N, d), float16, float32 or float64 (e.g. (B, H, N, d)).
        pos: (N,) int64; theta: (d/2,).
        delta, bias: a Python float, a (d/2,) tensor shared by all heads, or an (H, 1, d/2)
            tensor with one row per head; they broadcast against the pairs (..., N, d/2).

    Returns:
        (..., N, d) in x's dtype. Compute in float32 (float64 for float64 input) and cast
        back: in float16, eps = 1e-12 would round to 0.

    Raises:
        ValueError if the last dimension of x is odd (there are no pairs).
    """
    raise NotImplementedError("ch04.euler_rotate")


def complex_scores(
    q: Tensor, k: Tensor, pos: Tensor, theta: Tensor, delta, bias, eps: float = 1e-12
) -> Tensor:
    """Self-attention scores of the adaptive rotation, with the explicit pairwise formula.

        score[m, n] = Σ_j λq[m,j] λk[n,j]
                      · cos( δ_j (φq[m,j] - φk[n,j]) + b_j + (pos[m] - pos[n]) θ_j ) / sqrt(d)

    with λ = sqrt(r² + p² + eps) and φ = atan2(p, r) of the interleaved pairs of q and k. The
    bias belongs to the query angle only.

    Args:
        q, k: (..., N, d) (e.g. (B, H, N, d)), float32 or float64, same positions pos (N,).
        theta: (d/2,); delta, bias: a float, (d/2,), or (H, 1, d/2) as in euler_rotate (in the
            pairwise formula, give a tensor parameter an extra key axis: delta[..., None, :]).

    Returns:
        (..., N, N) scores (before any softmax or mask), q's dtype.
    """
    raise NotImplementedError("ch04.complex_scores")


def rope_deviation(delta: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """How far each head's learned rotation is from RoPE (δ = 1, b = 0).

    Args:
        delta, bias: (H, F): per head, one value per frequency (F = d/2, or 1).

    Returns:
        (delta_deviation, bias_deviation), each (H,), in the input's dtype:
        sqrt(mean_j (δ[h, j] - 1)²) and sqrt(mean_j b[h, j]²).
    """
    raise NotImplementedError("ch04.rope_deviation")
