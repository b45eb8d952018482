"""Chapter 08 solutions: multi-branch attention pooling (ACMIL)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbook.mechanisms.multi_branch_pooling import ACMIL
from attnbook.mechanisms.multi_branch_pooling import acmil_loss as library_acmil_loss
from attnbook.metrics import roc_auc
from attnbook.tasks import shortcut_bags, shortcut_patterns


def multi_branch_attention(
    X: Tensor, W_tanh: Tensor, W_gate: Tensor, Q: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    # k_j = tanh(W_tanh x_j) ⊙ sigmoid(W_gate x_j)
    keys = torch.tanh(X @ W_tanh.T) * torch.sigmoid(X @ W_gate.T)  # (M, d)
    # S = Q k^T
    S = Q @ keys.T  # (H, M)
    # A_h = softmax_j(S_h)
    A = torch.softmax(S, dim=1)
    # f_h = Σ_j A_{hj} x_j ;  f_slide = Σ_j Ā_j x_j
    return A, A @ X, A.mean(dim=0) @ X


def stkim_mask(
    logits: Tensor, n_top: int, p: float, generator: torch.Generator, training: bool = True
) -> Tensor:
    if not training:
        return logits
    H, M = logits.shape
    top = min(n_top, M)
    n_drop = int(top * p)
    candidates = torch.topk(logits, top, dim=1).indices  # (H, top)
    order = torch.argsort(torch.rand(H, top, generator=generator, device=logits.device), dim=1)
    chosen = candidates.gather(1, order[:, :n_drop])
    hidden = torch.zeros_like(logits, dtype=torch.bool).scatter(1, chosen, True)
    return logits.masked_fill(hidden, float("-inf"))


def diversity_loss(a: Tensor) -> Tensor:
    H = a.shape[0]
    if H == 1:
        return a.sum() * 0.0
    unit = a / a.norm(dim=1, keepdim=True)
    h, h2 = torch.triu_indices(H, H, offset=1, device=a.device)
    # mean over h < h' of cos(A_h, A_h')
    return (unit @ unit.T)[h, h2].mean()


def acmil_loss(branch_logits: Tensor, slide_logits: Tensor, a: Tensor, y: int) -> Tensor:
    H = branch_logits.shape[0]
    target = torch.full((H,), y, dtype=torch.long, device=branch_logits.device)
    # ℒ_slide = CE(slide, y)
    loss = F.cross_entropy(slide_logits[None], target[:1])
    if H > 1:
        # ℒ_branch = mean_h CE(branch_h, y) ;  ℒ_div = mean_{h<h'} cos(A_h, A_h')
        loss = loss + F.cross_entropy(branch_logits, target) + diversity_loss(a)
    return loss


def stkim_experiment(p: float, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    patterns = shortcut_patterns(16, g)
    train, test = shortcut_bags(15, "train", patterns, g), shortcut_bags(60, "test", patterns, g)
    torch.manual_seed(seed)
    model = ACMIL(16, 32, 16, H=1, n_top=10, p=p)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed + 100)
    for _ in range(15):
        model.train()
        for i in torch.randperm(len(train.bags), generator=gen).tolist():
            out = model(train.bags[i], gen)
            loss = library_acmil_loss(
                out.branch_logits, out.slide_logits, out.attention, int(train.labels[i])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = torch.stack([torch.softmax(model(x).slide_logits, 0)[1] for x in test.bags])
    keep = test.shown != 0
    return roc_auc(scores[keep], test.labels[keep])
