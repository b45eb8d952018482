"""Chapter 11 exercises: Head importance.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 11

or, in a notebook, ``check("ch11.<function name>", your_function)`` from attnbook.grading.

masked_mha ★★ (15 min), distance_profile ★★ (20 min), recenter ★ (10 min), taylor_importance
★★★ (30 min, the heart of the chapter), pruning_experiment ★★ (20 min, an experiment: it trains a
model and returns what it measures; grading it takes a few seconds).
Use only torch for the first four; do not call attnbook.mechanisms.head_importance's versions of
them (it solves these). pruning_experiment uses attnbook's head_masked_transformer,
PatchEmbedding, set_head_masks, train and shape_patches, with your taylor_importance.
"""

from torch import Tensor, nn


def masked_mha(
    x: Tensor, w_qkv: Tensor, w_o: Tensor, n_heads: int, head_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Multi-head self-attention with a gate on each head's output (no biases, no mask).

        out = Σ_h g_h (A_h V_h) W_O^h,   A_h = softmax(Q_h K_h^T / sqrt(d)),  d = D / H

    The weights are laid out as torch.nn.MultiheadAttention's: w_qkv = [W_q; W_k; W_v] stacked
    row-wise (q = x W_q^T), w_o as out_proj.weight (out = z w_o^T); head h owns rows
    h·d ... (h+1)·d - 1 of W_q, W_k, W_v and columns h·d ... (h+1)·d - 1 of w_o. With every
    gate 1 this is nn.MultiheadAttention(D, H, bias=False); a gate 0 removes its head.

    Args:
        x: (B, N, D) tokens, float32 or float64.
        w_qkv: (3D, D) packed projections.
        w_o: (D, D) output projection.
        n_heads: H (D is divisible by H).
        head_mask: (H,) gates g_h, real numbers (not only 0 and 1).

    Returns:
        out (B, N, D) and the attention weights A (B, H, N, N), both in x's dtype.
    """
    raise NotImplementedError("ch11.masked_mha")


def distance_profile(attn: Tensor, grid: int, has_cls: bool, metric: str, normalize: str) -> Tensor:
    """Attention strength by query-key distance on a G×G patch grid, per head.

    Patch j (row-major) sits at row j // G, column j % G. With has_cls, token 0 is the CLS
    token: drop its query row and its key column, then renormalise each patch row over the
    patches (so it sums to 1 again). The distance dist(i, j) between patches is "chebyshev"
    max(|Δr|, |Δc|) (square rings) or "euclidean" sqrt(Δr² + Δc²); the bins are the distinct
    values of dist over all pairs of patches, in increasing order.

        normalize="mass":  mass(t) = mean over examples b and queries i of Σ_{j: dist(i,j)=t} A[b, h, i, j]
                           (the masses of one head sum to 1)
        normalize="mean":  pair(t) = Σ_b Σ_{(i, j): dist(i,j)=t} A[b, h, i, j] / (B · #{(i, j): dist(i,j)=t})
                           (the average weight of one (query, key) pair at distance t)

    Args:
        attn: (B, H, N, N) attention weights (rows sum to 1); N = G² + 1 with CLS, else G².
        grid: G.
        has_cls: whether token 0 is a CLS token.
        metric: "chebyshev" or "euclidean".
        normalize: "mass" or "mean".

    Returns:
        (H, n_bins) in attn's dtype. Raise a ValueError when N does not match the grid.
    """
    raise NotImplementedError("ch11.distance_profile")


def recenter(row: Tensor, grid: int, i: int) -> Tensor:
    """Move one query's attention row onto a canvas centred on the query.

    Patch j (row-major) sits at (r_j, c_j) = (j // G, j % G); the query is patch i. Return a
    (2G - 1) × (2G - 1) canvas, zeros except

        canvas[G - 1 + r_j - r_i, G - 1 + c_j - c_i] = row[j]     for every patch j,

    so the query's own weight lands at the centre (G - 1, G - 1), a key one row below the query
    one row below the centre, and the identity row gives a single central pixel for every i.

    Args:
        row: (G²,) the query's weights over the patches (CLS already dropped), float.
        grid: G.
        i: the query's patch index, 0 <= i < G².

    Returns:
        (2G - 1, 2G - 1) in row's dtype.
    """
    raise NotImplementedError("ch11.recenter")


def taylor_importance(model: nn.Module, inputs, loss_fn) -> Tensor:
    """Taylor importance of every head: Imp_{lh} = E_x |∂L_x/∂g_{lh}| at g = 1.

    ``model`` is a TinyTransformer built by head_masked_transformer: block l's attention carries
    a gate module ``model.blocks[l].attn.head_gate`` whose buffer ``.mask`` holds the gates g of
    that layer, all ones. You may set it to a (H,) tensor (one gate per head) or to a (B, H) tensor
    (one gate per example and head: example x's output is gated by mask[x]).

    Take the derivative per example x, then its absolute value, then the mean over the B examples.
    The sum over tokens is inside the derivative (one gate scales head h's output at every token):
    do not take absolute values per token, nor of the batch's mean gradient. One backward pass is
    enough: with per-example gates g_{x,lh} = 1 (requires_grad), ∂(Σ_x L_x)/∂g_{x,lh} = ∂L_x/∂g_{lh}.

    Args:
        model: the gated model, called as ``model(inputs)``.
        inputs: its input batch of B examples (``len(inputs) == B``).
        loss_fn: ``loss_fn(model(inputs)) -> (B,)`` the per-example losses L_x.

    Returns:
        (L, H) the scores (any float dtype). Afterwards every gate must be back at ones (H,) and
        the model's weights unchanged.
    """
    raise NotImplementedError("ch11.taylor_importance")


def pruning_experiment(seed: int) -> tuple[float, float, float]:
    """Experiment: train the chapter's tiny ViT, prune half its heads by Taylor score, measure.

    Build and train, as in the chapter's section 4 but smaller:

    - after ``torch.manual_seed(seed)``, model = head_masked_transformer(ModelConfig(D=16, H=4,
      layers=2, n_out=4, max_len=17, mlp_ratio=2, causal=False), embed=PatchEmbedding(4, 16));
    - attnbook.train.train for 60 steps, lr=3e-3, seed=seed, progress=False, on batches
      ``shape_patches(64, size=8, patch=2, length=5, generator=g)``, with the loss the cross-entropy
      of the logits at the CLS token, ``model(b)[:, 0]``, against ``b.target``;
    - the test set ``shape_patches(256, size=8, patch=2, length=5,
      generator=torch.Generator().manual_seed(999))``; accuracy = argmax of ``model(test)[:, 0]``
      equals ``test.target``, under torch.no_grad();
    - the Taylor scores of the 8 heads on the test set (your taylor_importance, per-example
      cross-entropy losses at the CLS token).

    Returns:
        (accuracy with every head, accuracy with the 4 heads of LOWEST Taylor score gated to 0,
        accuracy with the 4 heads of HIGHEST score gated to 0), floats in [0, 1].
    """
    raise NotImplementedError("ch11.pruning_experiment")
