"""Chapter 08 solutions: multi-branch attention pooling (ACMIL)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbook.mechanisms.multi_branch_pooling import ACMIL
from attnbook.mechanisms.multi_branch_pooling import acmil_loss as library_acmil_loss
from attnbook.tasks import shortcut_bags, shortcut_patterns


def multi_branch_attention(h: Tensor, V: Tensor, U: Tensor, W: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # κ_i = tanh(V h_i) ⊙ sigmoid(U h_i)
    keys = torch.tanh(h @ V.T) * torch.sigmoid(h @ U.T)  # (N, D)
    # A = W κ^T
    logits = W @ keys.T  # (K, N)
    # a_k = softmax_i(A_k)
    a = torch.softmax(logits, dim=1)
    # f_k = Σ_i a_{k,i} h_i ;  f_slide = Σ_i ā_i h_i
    return a, a @ h, a.mean(dim=0) @ h


def stkim_mask(
    logits: Tensor, k_top: int, p: float, generator: torch.Generator, training: bool = True
) -> Tensor:
    if not training:
        return logits
    K, N = logits.shape
    top = min(k_top, N)
    n = int(top * p)
    candidates = torch.topk(logits, top, dim=1).indices  # (K, top)
    order = torch.argsort(torch.rand(K, top, generator=generator, device=logits.device), dim=1)
    hidden = torch.zeros_like(logits, dtype=torch.bool).scatter(1, candidates.gather(1, order[:, :n]), True)
    return logits.masked_fill(hidden, float("-inf"))


def diversity_loss(a: Tensor) -> Tensor:
    K = a.shape[0]
    if K == 1:
        return a.sum() * 0.0
    unit = a / a.norm(dim=1, keepdim=True)
    j, k = torch.triu_indices(K, K, offset=1, device=a.device)
    # mean over j < k of cos(a_j, a_k)
    return (unit @ unit.T)[j, k].mean()


def acmil_loss(branch_logits: Tensor, slide_logits: Tensor, a: Tensor, y: int) -> Tensor:
    K = branch_logits.shape[0]
    target = torch.full((K,), y, dtype=torch.long, device=branch_logits.device)
    # ℒ_slide = CE(slide, y)
    loss = F.cross_entropy(slide_logits[None], target[:1])
    if K > 1:
        # ℒ_branch = mean_k CE(branch_k, y) ;  ℒ_div = mean_{j<k} cos(a_j, a_k)
        loss = loss + F.cross_entropy(branch_logits, target) + diversity_loss(a)
    return loss


def _auc(scores: Tensor, labels: Tensor) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    # P(score of a positive > score of a negative), ties counted one half
    wins = (pos[:, None] > neg[None]).double().mean() + 0.5 * (pos[:, None] == neg[None]).double().mean()
    return wins.item()


def stkim_experiment(p: float, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    patterns = shortcut_patterns(16, g)
    train, test = shortcut_bags(15, "train", patterns, g), shortcut_bags(60, "test", patterns, g)
    torch.manual_seed(seed)
    model = ACMIL(16, 32, 16, K=1, k_top=10, p=p)
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
    return _auc(scores[keep], test.labels[keep])
