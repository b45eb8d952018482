"""Chapter 10 checks: Task injection into heads.

Each @task grades one function of exercises/ch10_task_injection.py on fresh random inputs against an
independent reference. Each @mistake declares a common wrong answer once, with the hint a
learner gets when their answer matches it; tests/exercises/test_ch10_task_injection.py checks that
every declared mistake fails its task and gets its own hint.

The references are written here, independently of attnbook.mechanisms.task_injection: explicit
loops over prompts, layers and heads, in float64.
"""

import functools

import torch

from ...attention import Intermediates
from ...models import ModelConfig, TinyTransformer
from ...tasks import task_prompts
from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_number, expect_tensor, fresh_generator, one_thread

# (M, L, H, N, d, D, dtype): M = 1, one layer, right-padded prompts of different lengths, both dtypes
EMBEDDING_CASES = (
    (3, 2, 3, 6, 4, 12, torch.float64),
    (1, 1, 2, 5, 3, 6, torch.float32),
    (5, 3, 4, 7, 2, 8, torch.float32),
)
# (B, H, N, d, dtype): H = d first (a per-coordinate α broadcasts silently), N = 1, float16 last
INJECT_CASES = (
    (2, 4, 5, 4, torch.float64),
    (3, 3, 6, 5, torch.float32),
    (1, 2, 1, 3, torch.float64),
    (4, 5, 7, 6, torch.float16),
)


def _records(g, M, L, H, N, d, D, dtype):
    """L records of a batch of M prompts: heads (M, H, N, d), contributions = heads W_O^h (M, H, N, D)."""
    records = []
    for _ in range(L):
        heads = torch.randn(M, H, N, d, generator=g, dtype=dtype)
        w_o = torch.randn(H, d, D, generator=g, dtype=dtype) / d**0.5
        contributions = torch.einsum("mhnd,hde->mhne", heads, w_o)
        scores = torch.randn(M, H, N, N, generator=g, dtype=dtype)
        qkv = [torch.randn(M, H, N, d, generator=g, dtype=dtype) for _ in range(3)]
        records.append(Intermediates(*qkv, scores, scores.softmax(-1), heads, None, contributions))
    return records


def _lengths(g, M, N):
    """Right-padded prompt lengths in 1 ... N with at least one prompt shorter than N (when M > 1)."""
    lengths = torch.randint(1, N + 1, (M,), generator=g)
    lengths[0] = N
    if M > 1:
        lengths[-1] = max(1, N - 2)
    return lengths


@task("ch10.task_embedding", points=2)
def check_task_embedding(fn):
    """t^l_h = mean over the M prompts of z^l_{T_m,h} (heads, at the last real token): (L, H, d)."""
    g, _ = fresh_generator()
    for M, L, H, N, d, D, dtype in EMBEDDING_CASES:
        records = _records(g, M, L, H, N, d, D, dtype)
        last_idx = _lengths(g, M, N) - 1
        what = f"task_embedding({describe({'M': M, 'L': L, 'H': H, 'N': N, 'd': d, 'dtype': dtype})})"
        with case():
            answer = fn(records, last_idx.clone())
            expected = torch.zeros(L, H, d, dtype=torch.float64)
            for layer, record in enumerate(records):
                for head in range(H):
                    for m in range(M):
                        expected[layer, head] += record.heads[m, head, last_idx[m]].double() / M
            expect_close(answer, expected.to(dtype), what=what)


def _inject_reference(z, t, alpha, last_idx):
    out = z.double().clone()
    for b in range(z.shape[0]):
        for h in range(z.shape[1]):
            T, a = int(last_idx[b]), float(alpha[h])
            out[b, h, T] = (1 - a) * z[b, h, T].double() + a * t[h].double()
    return out.to(z.dtype)


@task("ch10.soft_inject", points=2)
def check_soft_inject(fn):
    """z̃ = (1 − α_h) z + α_h t_h at T = last_idx[b] only, one α per head; a new tensor in z's dtype."""
    g, _ = fresh_generator()
    for B, H, N, d, dtype in INJECT_CASES:
        z = torch.randn(B, H, N, d, generator=g).to(dtype)
        t = torch.randn(H, d, generator=g).to(dtype)
        alpha = torch.rand(H, generator=g).to(dtype)
        last_idx = torch.randint(0, N, (B,), generator=g)
        last_idx[-1] = max(0, N - 3)  # a right-padded prompt: its last real token is not at −1
        what = f"soft_inject({describe({'B': B, 'H': H, 'N': N, 'd': d, 'dtype': dtype})})"
        with case():
            z_before = z.clone()
            answer = fn(z, t, alpha, last_idx.clone())
            if not torch.equal(z, z_before):
                raise CheckFailed(f"{what} changed its input z in place; return a new tensor")
            expect_tensor(answer, shape=(B, H, N, d), dtype=dtype, what=what)
            expect_close(answer, _inject_reference(z, t, alpha, last_idx), what=what)


def _stack(records, field="heads"):
    return torch.stack([getattr(r, field) for r in records], dim=1)  # (M, L, H, N, ·)


@mistake("ch10.task_embedding", "take each prompt's last REAL token z[T_m] (not the mean over all positions)")
def task_embedding_over_all_positions(records, last_idx):
    return _stack(records).mean(dim=(0, 3))


@mistake("ch10.task_embedding", "right padding: the last real token is at last_idx[m], not at position −1")
def task_embedding_at_minus_one(records, last_idx):
    return _stack(records)[:, :, :, -1].mean(dim=0)


@mistake(
    "ch10.task_embedding",
    "the head activation is the input to W_O (record.heads, width d), not the output after W_O "
    "(record.contributions)",
)
def task_embedding_after_w_o(records, last_idx):
    stacked = _stack(records, "contributions")  # (M, L, H, N, D)
    return stacked[torch.arange(len(last_idx)), :, :, last_idx].mean(dim=0)


def _wrong_inject(
    z, t, alpha, last_idx, *, minus_one=False, per_coordinate=False, everywhere=False, swap=False
):
    a = alpha if per_coordinate else alpha[:, None]  # (d,) by mistake, or (H, 1)
    out = z.clone()
    rows = torch.arange(z.shape[0])
    T = torch.full_like(last_idx, -1) if minus_one else last_idx
    zt = z[rows, :, T]  # (B, H, d)
    mixed = a * zt + (1 - a) * t if swap else (1 - a) * zt + a * t
    if everywhere:
        return (1 - a[:, None]) * z + a[:, None] * t[:, None]
    out[rows, :, T] = mixed
    return out


@mistake("ch10.soft_inject", "right padding: edit position last_idx[b] of each prompt, not position −1")
def soft_inject_at_minus_one(z, t, alpha, last_idx):
    return _wrong_inject(z, t, alpha, last_idx, minus_one=True)


@mistake(
    "ch10.soft_inject",
    "alpha has one weight per HEAD: reshape it to (H, 1, 1) so it broadcasts over positions and "
    "the d coordinates, not along the last axis",
)
def soft_inject_alpha_over_coordinates(z, t, alpha, last_idx):
    return _wrong_inject(z, t, alpha, last_idx, per_coordinate=True)


@mistake("ch10.soft_inject", "inject at the last prompt token only; every other position keeps its z")
def soft_inject_everywhere(z, t, alpha, last_idx):
    return _wrong_inject(z, t, alpha, last_idx, everywhere=True)


@mistake("ch10.soft_inject", "α weighs the task embedding: (1 − α) z + α t (α = 1 replaces z by t)")
def soft_inject_swapped(z, t, alpha, last_idx):
    return _wrong_inject(z, t, alpha, last_idx, swap=True)


# ---- optimize_alpha: a toy frozen "model" and an independent Adam, in float64 ----------------------


class _ToyModel:
    """A frozen linear "model": loss(α, batch) = mean((Σ_lh α_lh w_lh · x − y)²) + a penalty.

    Its parameter takes part in the loss and must receive no gradient.
    """

    def __init__(self, g, L, H):
        self.w = torch.randn(L, H, generator=g)
        self.target = torch.rand(L, H, generator=g) * 0.8 + 0.1  # the α that fits the data
        self.param = torch.randn(L, H, generator=g).requires_grad_(True)  # the frozen model's weight

    def batch(self, g, n=8):
        x = torch.randn(n, generator=g)
        return x, (self.target * self.w).sum() * x

    def loss(self, alpha, batch):
        x, y = batch
        # the parameter takes part in the loss: loss.backward() would fill its .grad
        pred = (alpha * self.w + 0.0 * self.param).sum() * x
        return ((pred - y) ** 2).mean() + 0.1 * ((alpha - self.target) ** 2).sum()


def _adam_reference(loss_fn, shape, batches, lr, val_values, eval_every):
    """Adam (betas 0.9, 0.999, eps 1e-8) on the logits a, by hand; best-validation α or the last."""
    a = torch.zeros(shape, dtype=torch.float64)
    m, v = torch.zeros_like(a), torch.zeros_like(a)
    best, best_value, validations = None, float("inf"), 0
    for step, batch in enumerate(batches, start=1):
        logits = a.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(torch.sigmoid(logits).float(), batch), [logits])
        grad = grad.double()
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        a = a - lr * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
        if val_values is not None and step % eval_every == 0:
            value = val_values[validations]
            validations += 1
            if value < best_value:
                best, best_value = a.clone(), value
    return torch.sigmoid(a if best is None else best)


# (L, H, steps, lr, eval_every, validation values or None): the best validation is an early one
ALPHA_CASES = (
    (2, 3, 12, 0.2, 4, (0.5, 0.2, 0.9)),
    (1, 4, 10, 0.05, 5, (0.3, 0.4)),
    (3, 2, 8, 0.2, 2, None),
)


@task("ch10.optimize_alpha", points=3)
def check_optimize_alpha(fn):
    """α = sigmoid(a), a = 0 at the start, Adam on a only, the best-validation α returned."""
    g, _ = fresh_generator()
    for L, H, steps, lr, eval_every, val_values in ALPHA_CASES:
        toy = _ToyModel(g, L, H)
        batches = [toy.batch(g) for _ in range(steps)]
        seen = []

        def loss_fn(alpha, batch, toy=toy, seen=seen):
            seen.append(alpha.detach().clone())
            return toy.loss(alpha, batch)

        calls = []

        def val_loss_fn(alpha, val_values=val_values, calls=calls):
            calls.append(alpha.detach().clone())
            return val_values[min(len(calls), len(val_values)) - 1]

        sizes = {"L": L, "H": H, "steps": steps, "lr": lr, "eval_every": eval_every}
        what = f"optimize_alpha({describe(sizes)})"
        with case():
            answer = fn(loss_fn, (L, H), list(batches), lr, val_loss_fn if val_values else None, eval_every)
            if toy.param.grad is not None:
                raise CheckFailed(
                    f"{what} left a gradient in the model's parameters",
                    hint="differentiate with respect to the logits only, torch.autograd.grad(loss, [a]), "
                    "instead of loss.backward(): the model stays frozen",
                )
            if seen and not torch.allclose(seen[0], torch.full((L, H), 0.5)):
                raise CheckFailed(
                    f"{what}: the first α passed to loss_fn was not 0.5 everywhere",
                    hint="start from logits a = 0, so α = sigmoid(0) = 0.5 for every head",
                )
            if val_values and len(calls) != steps // eval_every:
                raise CheckFailed(
                    f"{what} called val_loss_fn {len(calls)} times; expected {steps // eval_every} "
                    f"(after every {eval_every}-th step)"
                )
            expect_tensor(answer, shape=(L, H), dtype=torch.float32, what=what)
            expected = _adam_reference(toy.loss, (L, H), batches, lr, val_values, eval_every)
            expect_close(answer, expected.float(), what=what, atol=1e-4, rtol=1e-4)


# ---- embedding_error: the experiment ------------------------------------------------------------------

REFERENCE_SEEDS = tuple(range(12))


def _reference_embedding_error(M: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = TinyTransformer(ModelConfig(D=32, H=4, layers=2, vocab=20, n_out=10, max_len=11)).eval()
    g = torch.Generator().manual_seed(seed)

    def embedding(n):
        tokens = task_prompts(0, n, 5, g).tokens  # (n, 11), unpadded: T = 10 for every prompt
        with torch.no_grad():
            _, records = model(tokens, return_intermediates=True)
        out = torch.zeros(len(records), records[0].heads.shape[1], records[0].heads.shape[-1])
        for layer, record in enumerate(records):
            out[layer] = record.heads[:, :, 10].mean(dim=0)  # (H, d)
        return out

    reference = embedding(400)
    return float((embedding(M) - reference).norm() / reference.norm())


@functools.cache
def _reference_errors(M: int) -> tuple[float, ...]:
    with torch.random.fork_rng(devices=[]), one_thread():
        return tuple(_reference_embedding_error(M, s) for s in REFERENCE_SEEDS)


@task("ch10.embedding_error", points=2)
def check_embedding_error(fn):
    """The task embedding's relative error from M prompts, in the reference's range, shrinking with M."""
    gen, _ = fresh_generator()
    first = int(torch.randint(100, 10_000, (1,), generator=gen))
    seeds = (first, first + 1, first + 2)
    means = {}
    with one_thread():
        for M in (5, 20):
            ref = _reference_errors(M)
            # a mean of 3 seeds varies less than one seed: the reference's single-seed range, widened a little
            low, high = 0.8 * min(ref), 1.2 * max(ref)
            with case():
                got = [
                    expect_number(
                        fn(M, s), f"embedding_error({M}, {s})", expected="the relative error as a float"
                    )
                    for s in seeds
                ]
                means[M] = sum(got) / len(got)
                if not low <= means[M] <= high:
                    raise CheckFailed(
                        f"embedding_error({M}, seed) averages {means[M]:.3f} over seeds {seeds}; the "
                        f"reference gives {min(ref):.3f} to {max(ref):.3f} over seeds 0 … {len(ref) - 1}, "
                        f"so expect {low:.3f} to {high:.3f}",
                        hint="‖t_M − t_ref‖ / ‖t_ref‖: the error relative to the 400-prompt embedding, with "
                        "t from the head activations z (record.heads) at the last prompt token",
                    )
    with case():
        if len(means) == 2 and means[5] < 1.3 * means[20]:
            ref5, ref20 = _reference_errors(5), _reference_errors(20)
            raise CheckFailed(
                f"over seeds {seeds} the error is {means[5]:.3f} with M = 5 and {means[20]:.3f} with M = 20; "
                f"the reference's errors shrink about as 1/√M ({sum(ref5) / len(ref5):.3f} → "
                f"{sum(ref20) / len(ref20):.3f} on average)",
                hint="t_M is the mean over M fresh prompts: use M",
            )
