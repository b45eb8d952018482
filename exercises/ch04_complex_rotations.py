"""Chapter 04 exercises: RoPE as a complex rotation, and adaptive (Euler) rotations.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 04

or, in a notebook, ``check("ch04.<function name>", your_function)`` from attnbook.grading.
Use only torch. Conventions of the whole chapter:

- pairs are INTERLEAVED: pair ν of a vector x of even width d is the complex number
  x[..., 2ν] + i·x[..., 2ν+1], ν = 0 ... d/2 - 1 (not the half-split (ν, ν + d/2) layout);
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
        (..., N, d), same dtype as x: pair ν of token i multiplied by e^{i pos[i] θ_ν},
        i.e. (Re, Im) -> (Re cos a - Im sin a, Re sin a + Im cos a) with a = pos[i]·θ_ν, written back
        in the interleaved layout.
    """
    raise NotImplementedError("ch04.rope")


def euler_rotate(x: Tensor, pos: Tensor, theta: Tensor, gamma, bias, eps: float = 1e-12) -> Tensor:
    """Adaptive rotation in polar (Euler) form, for one side: queries (with their bias) or keys.

    For every pair (Re, Im) of token i:
        ρ = sqrt(Re² + Im² + eps)         (eps keeps the gradient finite at Re = Im = 0)
        ψ = atan2(Im, Re)                  (the semantic angle, in (-π, π])
        angle = γ·ψ + pos[i]·θ_ν + b       (γ scales ψ only, not the position angle)
        output pair = (ρ cos(angle), ρ sin(angle))

    Args:
        x: (..., N, d), float16, float32 or float64 (e.g. (B, H, N, d)).
        pos: (N,) int64; theta: (d/2,).
        gamma, bias: a Python float, a (d/2,) tensor shared by all heads, or an (H, 1, d/2)
            tensor with one row per head; they broadcast against the pairs (..., N, d/2).

    Returns:
        (..., N, d) in x's dtype. Compute in float32 (float64 for float64 input) and cast
        back: in float16, eps = 1e-12 would round to 0.

    Raises:
        ValueError if the last dimension of x is odd (there are no pairs).
    """
    raise NotImplementedError("ch04.euler_rotate")


def complex_scores(
    q: Tensor, k: Tensor, pos: Tensor, theta: Tensor, gamma, bias, eps: float = 1e-12
) -> Tensor:
    """Self-attention scores of the adaptive rotation, with the explicit pairwise formula.

        S[i, j] = Σ_ν ρq[i,ν] ρk[j,ν]
                  · cos( γ_ν (ψq[i,ν] - ψk[j,ν]) + b_ν + (pos[i] - pos[j]) θ_ν ) / sqrt(d)

    with ρ = sqrt(Re² + Im² + eps) and ψ = atan2(Im, Re) of the interleaved pairs of q and k. The
    bias belongs to the query angle only.

    Args:
        q, k: (..., N, d) (e.g. (B, H, N, d)), float32 or float64, same positions pos (N,).
        theta: (d/2,); gamma, bias: a float, (d/2,), or (H, 1, d/2) as in euler_rotate (in the
            pairwise formula, give a tensor parameter an extra key axis: gamma[..., None, :]).

    Returns:
        (..., N, N) scores (before any softmax or mask), q's dtype.
    """
    raise NotImplementedError("ch04.complex_scores")


def adaptive_attention(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, gamma, bias) -> tuple[Tensor, Tensor]:
    """Causal attention of one layer with adaptive rotations, written the per-token way.

    The N queries are the LAST N of the M positions (decoding with a cache of M - N tokens):
    query i sits at position p_i = i + M - N, key j at position j, and key j is visible to
    query i when j <= p_i.

    1. Rotate every query to the angle γ·ψ + p_i·θ_ν + b_ν and every key to γ·ψ + j·θ_ν
       (no bias on the keys), magnitudes kept: your euler_rotate, twice.
    2. Scores S = τ q' k'^T with τ = 1/sqrt(d); hidden keys get -inf.
    3. weights = softmax over the keys; out = weights @ v (the values are NOT rotated).

    Do not build the pairwise angle tensor (..., N, M, d/2): the adapted angle is linear in the
    two phases, so rotating each token once and one matrix product give the same scores. The
    check watches the shapes your code produces.

    Args:
        q: (B, H, N, d); k, v: (B, H, M, d), N <= M; float32 or float64, d even.
        theta: (d/2,) frequencies.
        gamma, bias: a float, a (d/2,) tensor shared by the heads, or (H, 1, d/2) per head.

    Returns:
        (out, weights): (B, H, N, d) and (B, H, N, M), q's dtype.
    """
    raise NotImplementedError("ch04.adaptive_attention")


def positional_accuracy(mode: str, seed: int) -> float:
    """EXPERIMENT: train one small rotary transformer and measure its positional accuracy.

    The recipe (the chapter's miniature, scaled down to about a second of training):

        from attnbook.mechanisms.complex_rotations import rotary_transformer
        from attnbook.mechanisms.complex_rotations_experiment import train_lookup
        from attnbook.tasks.mixed_lookup import mixed_lookup

        model, _ = train_lookup(mode, seed, N=12, n_sym=6, D=16, H=2, layers=1,
                                steps=60, batch_size=32, lr=2e-2)
        test = mixed_lookup(500, 12, 6, generator=torch.Generator().manual_seed(1000 + seed))

    (train_lookup builds rotary_transformer(4 * n_sym, n_sym, ..., mode=mode), then trains it
    with cross-entropy on mixed_lookup batches; read it, or write the loop yourself.)
    Predict with model(test.tokens).argmax(-1) and return the fraction of the POSITIONAL
    questions (test.kind == 0) answered correctly, as a Python float.

    Args:
        mode: "nope", "rope", "shared" or "per_head" (the rotation of every layer).
        seed: seeds the model, the training batches and the test batch.

    The check calls it with mode "nope" and "rope" and a seed of its own, and accepts a value
    within the spread that its own runs of the recipe, over three other seeds, give.
    """
    raise NotImplementedError("ch04.positional_accuracy")
