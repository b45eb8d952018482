"""Chapter 01 exercises: random-feature attention (frozen random QK, trained U).

Fill in each function, then grade your work from the repository's root with

    attnbook grade 01

or, in a notebook, ``check("ch01.<function name>", your_function)`` from attnbook.grading.
Use only torch (and, in the experiment, the library functions it names). Notation (book/notation.md):
a query x_q ∈ R^D, M context tokens c_1 ... c_M ∈ R^D (the keys, which are also the values),
the augmented vectors x~ = [x; 1] ∈ R^{D+1}, H heads with frozen query-key matrices
W_QK^h ∈ R^{(D+1)×(D+1)}, the features Φ (n, P) of n examples, P = H(D+1), and the trained
values U (P,).

    ★★  rfa_features            ~20 min   the random-feature map of H heads, batched
    ★★  ridge_fit               ~15 min   closed-form ridge, primal or dual by shape
    ★★  ridge_validated         ~15 min   choose λ on a validation split
    ★★★ rfa_vs_mlp_experiment   ~20 min   run the comparison, return a test error
"""

from torch import Tensor


def rfa_features(xq: Tensor, C: Tensor, W: Tensor, act: str = "relu") -> Tensor:
    """The random attention features of H heads, flattened head-major.

    For each example, head h and key j:
        S_hj = x~_q^T W_QK^h c~_j                     (the score; x~ = [x; 1])
        A_hj = ReLU(S_hj) / M        if act == "relu"
        A_hj = softmax over the M keys of S_h·       if act == "softmax"
        φ_h  = Σ_j A_hj c~_j ∈ R^{D+1}                (the head's output with values c~_j)

    Args:
        xq: queries (B, D), float32 or float64.
        C: context tokens (B, M, D), same dtype; M may be 1.
        W: frozen query-key matrices (H, D+1, D+1), not symmetric in general.
        act: "relu" or "softmax".

    Returns:
        (B, H*(D+1)) in the input's dtype; entry h*(D+1) + k is coordinate k of φ_h
        (i.e. the (B, H, D+1) tensor of the φ_h, reshaped).
    """
    raise NotImplementedError("ch01.rfa_features")


def ridge_fit(Phi: Tensor, y: Tensor, lam: float) -> Tensor:
    """Ridge regression: the U minimising ||Phi U - y||² + lam ||U||² (no 1/n in front).

    Solve the smaller of the two linear systems: the primal (Φ^T Φ + λI) U = Φ^T y when n >= P,
    the dual (Φ Φ^T + λI) α = y, U = Φ^T α when P > n (both give the same U).

    Args:
        Phi: features (n, P), float32 or float64. n may be larger or smaller than P.
        y: targets (n,), same dtype.
        lam: the penalty λ > 0 (it may be tiny, e.g. 1e-10).

    Returns:
        U (P,) in Phi's dtype.
    """
    raise NotImplementedError("ch01.ridge_fit")


def ridge_validated(
    Phi_train: Tensor, y_train: Tensor, Phi_val: Tensor, y_val: Tensor, rel_lams: tuple[float, ...]
) -> tuple[Tensor, float]:
    """Ridge regression with λ chosen on a validation split.

    The grid is relative to the features' scale: for each rel in rel_lams (in order),
        λ = rel * trace(Φ_train^T Φ_train) / min(n, P)     (rel times the mean eigenvalue)
    fit U_λ = argmin ||Φ_train U - y_train||² + λ ||U||² on the training rows, and measure the
    validation error mean((Φ_val U_λ - y_val)²). Return the U with the lowest validation error
    (the first one on a tie) and its λ. The training error must not choose λ: it always
    prefers the smallest.

    Args:
        Phi_train: (n, P); y_train: (n,); Phi_val: (n_val, P); y_val: (n_val,). One float dtype.
        rel_lams: the relative penalties to try, all > 0.

    Returns:
        (U, lam): U (P,) in Phi_train's dtype, lam a Python float (the absolute λ).
    """
    raise NotImplementedError("ch01.ridge_validated")


def rfa_vs_mlp_experiment(model: str, seed: int) -> float:
    """The chapter's comparison at one size and one seed: return the normalised test error.

    Follow this protocol exactly (the grader runs it over seeds and checks your number against
    the range it finds), using the library: permutation_invariant_task from attnbook.tasks and
    sample_qk, rfa_features, sample_mlp_weights, rf_mlp_features, ridge_validated (default
    grid) and normalized_mse from attnbook.mechanisms.random_features.

    1. gen = torch.Generator().manual_seed(seed); draw 1000 examples of the "linear" target,
       M = 8 keys of width D = 8: xq, C, y = permutation_invariant_task(1000, "linear", N=8,
       d=8, generator=gen).
    2. Features from the same generator, P = 576 for both models:
       model == "rfa": H = 64 zero-mean heads, Phi = rfa_features(xq, C, sample_qk(64, 8,
       generator=gen)); model == "mlp": Phi = rf_mlp_features(xq, C, sample_mlp_weights(576,
       8, 8, generator=gen)).
    3. Rows 0-299 train, 300-499 validation, 500-999 test. Fit U with ridge_validated on the
       training and validation rows.
    4. Return normalized_mse(Phi_test @ U, y_test): the test MSE divided by Var(y_test).

    Returns:
        a Python float (about 0.4 for "rfa", about 1 for "mlp").
    """
    raise NotImplementedError("ch01.rfa_vs_mlp_experiment")
