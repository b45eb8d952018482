"""The chapter manifest: every chapter of the book, its files and its status, in one place.

A chapter is known everywhere by its number and slug (``"03"``, ``"gaussian-adaptive"``); every
file of it is named from them (``_`` for ``-``)::

    book/chapters/03-gaussian-adaptive.ipynb            the chapter
    attnbook/mechanisms/gaussian_adaptive.py            its mechanism
    attnbook/grading/checks/ch03_gaussian_adaptive.py   the checks of its exercises
    exercises/ch03_gaussian_adaptive.py                 the learner's stubs
    solutions/ch03_gaussian_adaptive.py                 the same functions, solved
    tests/exercises/test_ch03_gaussian_adaptive.py      the exercise tests
    tests/library/test_gaussian_adaptive.py             the mechanism's tests

The README's contents table and ``book/_toc.yml`` are generated from :data:`CHAPTERS`
(``python tools/sync_chapters.py``), the chapter contract test reads it, and
``python tools/new_chapter.py NN slug`` scaffolds a chapter's files and adds its entry here.

    >>> by_number("03").mechanism_path
    'attnbook/mechanisms/gaussian_adaptive.py'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["STATUSES", "Part", "PARTS", "FRONT_PAGES", "Chapter", "CHAPTERS", "by_number"]

#: planned: only this entry exists; draft: scaffolded, being written (not on the website yet);
#: written: every file is there and the chapter is in the book.
STATUSES = ("planned", "draft", "written")

_NUMBER = re.compile(r"\d\d")
_SLUG = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclass(frozen=True)
class Part:
    """A part of the book: chapters ``first`` up to the next part's first."""

    numeral: str
    caption: str
    first: str

    @property
    def label(self) -> str:
        return f"Part {self.numeral}: {self.caption}"


PARTS = (
    Part("0", "Foundations", "00"),
    Part("I", "What a layer of heads can learn", "01"),
    Part("II", "Reshaping the score", "03"),
    Part("III", "Heads as experts and branches", "07"),
    Part("IV", "Reading the heads", "11"),
    Part("V", "Windows and sparsity", "18"),
    Part("VI", "Long context", "24"),
    Part("VII", "Systems", "28"),
)

#: Pages of the website that are not chapters (paths under book/ without the extension, e.g.
#: "notation"); the table of contents lists them after the introduction, before chapter 00.
FRONT_PAGES: tuple[str, ...] = ("notation",)


@dataclass(frozen=True)
class Chapter:
    """One chapter: identity, content and status. Every file path derives from number and slug.

    Attributes:
        number: two digits, "00".."30".
        slug: lowercase words joined by "-", e.g. "multi-head-attention".
        title: the chapter's heading without its number.
        mechanism: what the chapter builds, in one line.
        paper: the paper(s), short, as the README's table cites them.
        status: "planned", "draft" or "written" (see :data:`STATUSES`).
        has_mechanism: False when the chapter's code lives in the core (chapter 00), so it has
            no module in attnbook/mechanisms/ and no tests/library/test_<slug>.py of its own.
        tasks: the attnbook.tasks generators the chapter trains or evaluates on.
        checks: the graded task ids of its exercises, "chNN.function_name".
        bib_keys: the book/references.bib entries the chapter cites.
    """

    number: str
    slug: str
    title: str
    mechanism: str
    paper: str
    status: str = "planned"
    has_mechanism: bool = True
    tasks: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    bib_keys: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.number, str) or not _NUMBER.fullmatch(self.number):
            raise ValueError(f"chapter number must be two digits such as '05', got {self.number!r}")
        if not _SLUG.fullmatch(self.slug):
            raise ValueError(f"chapter {self.number}: a slug is lowercase words joined by '-': {self.slug!r}")
        if self.status not in STATUSES:
            raise ValueError(f"chapter {self.number}: status must be one of {STATUSES}, got {self.status!r}")
        for name in ("tasks", "checks", "bib_keys"):
            if not isinstance(getattr(self, name), tuple):
                raise TypeError(f"chapter {self.number}: {name} must be a tuple of strings")
        for task_id in self.checks:
            if not re.fullmatch(rf"ch{self.number}\.[A-Za-z_]\w*", task_id):
                raise ValueError(f"chapter {self.number}: a task id is ch{self.number}.name: {task_id!r}")

    # --- names derived from number and slug ---------------------------------------------
    @property
    def name(self) -> str:
        """The slug as a Python name: "multi_head_attention"."""
        return self.slug.replace("-", "_")

    @property
    def label(self) -> str:
        """The number and slug: "00-multi-head-attention"."""
        return f"{self.number}-{self.slug}"

    @property
    def notebook_path(self) -> str:
        return f"book/chapters/{self.label}.ipynb"

    @property
    def toc_file(self) -> str:
        """The notebook as book/_toc.yml names it (relative to book/, no extension)."""
        return f"chapters/{self.label}"

    @property
    def mechanism_module(self) -> str:
        return f"attnbook.mechanisms.{self.name}"

    @property
    def mechanism_path(self) -> str:
        return f"attnbook/mechanisms/{self.name}.py"

    @property
    def check_module(self) -> str:
        return f"attnbook.grading.checks.ch{self.number}_{self.name}"

    @property
    def check_path(self) -> str:
        return f"attnbook/grading/checks/ch{self.number}_{self.name}.py"

    @property
    def exercise_path(self) -> str:
        return f"exercises/ch{self.number}_{self.name}.py"

    @property
    def solution_path(self) -> str:
        return f"solutions/ch{self.number}_{self.name}.py"

    @property
    def exercise_test_path(self) -> str:
        return f"tests/exercises/test_ch{self.number}_{self.name}.py"

    @property
    def library_test_path(self) -> str:
        return f"tests/library/test_{self.name}.py"

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the chapter owns (relative to the repository root), notebook first."""
        own = (self.mechanism_path,) if self.has_mechanism else ()
        tests = (self.library_test_path,) if self.has_mechanism else ()
        rest = (self.check_path, self.exercise_path, self.solution_path, self.exercise_test_path)
        return (self.notebook_path, *own, *rest, *tests)

    @property
    def part(self) -> Part:
        return [p for p in PARTS if p.first <= self.number][-1]


# The entries below are edited by tools/new_chapter.py: keep one "    Chapter(" ... "    )," block
# per chapter, in order.
CHAPTERS: tuple[Chapter, ...] = (
    Chapter(
        number="00",
        slug="multi-head-attention",
        title="Multi-head attention from scratch",
        mechanism="scaled dot-product, heads, masks, the sum-over-heads form",
        paper="Vaswani et al. 2017",
        status="written",
        has_mechanism=False,
        tasks=("associative_recall", "two_key_recall"),
        checks=(
            "ch00.scaled_dot_product_attention",
            "ch00.split_heads",
            "ch00.merge_heads",
            "ch00.multi_head_attention",
            "ch00.causal_mask",
            "ch00.heads_experiment",
        ),
        bib_keys=("vaswani2017attention",),
    ),
    Chapter(
        number="01",
        slug="random-features",
        title="Random-feature attention",
        mechanism="frozen random QK, trained V: attention as a random-feature model",
        paper="Fu et al. 2023",
        status="written",
        tasks=("permutation_invariant_task",),
        checks=(
            "ch01.rfa_features",
            "ch01.ridge_fit",
            "ch01.ridge_validated",
            "ch01.rfa_vs_mlp_experiment",
        ),
        bib_keys=("fu2023attention", "rahimi2007random"),
    ),
    Chapter(
        number="02",
        slug="in-context-regression",
        title="In-context linear regression with multi-head softmax attention",
        mechanism="multi-head softmax attention learns debiased gradient descent",
        paper="He et al. 2025",
        status="written",
        tasks=("linear_regression_prompts",),
        checks=(
            "ch02.icl_batch",
            "ch02.icl_forward",
            "ch02.debiased_gd",
            "ch02.extract_omega_mu",
            "ch02.pair_distance_to_dgd",
        ),
        bib_keys=("he2025incontext", "garg2022what", "vonoswald2023transformers"),
    ),
    Chapter(
        number="03",
        slug="gaussian-adaptive",
        title="Gaussian adaptive attention",
        mechanism="learnable-mean/variance Gaussian attention",
        paper="Ioannides et al. 2024",
        status="written",
        tasks=("drifting_layers",),
        checks=(
            "ch03.gaam_weights",
            "ch03.multi_head_gaam",
            "ch03.collapse_product",
            "ch03.importance_factor",
            "ch03.gain_sweep_share",
        ),
        bib_keys=("ioannides2024gaussian",),
    ),
    Chapter(
        number="04",
        slug="complex-rotations",
        title="Complex rotations: from RoPE to per-head adaptive rotations",
        mechanism="RoPE as complex rotation → per-head adaptive rotation",
        paper="EulerFormer 2024; ComplexFormer 2025 (withdrawn)",
        status="written",
        tasks=("mixed_lookup",),
        checks=(
            "ch04.rope",
            "ch04.euler_rotate",
            "ch04.complex_scores",
            "ch04.adaptive_attention",
            "ch04.positional_accuracy",
        ),
        bib_keys=("su2021roformer", "tian2024eulerformer", "complexformer2025"),
    ),
    Chapter(
        number="05",
        slug="relative-convolutional",
        title="Relative convolutional attention",
        mechanism="depth-wise convolution on Q/K/V + relative positions",
        paper="RCMHA 2023",
        status="written",
        checks=("ch05.causal_dwconv", "ch05.relative_scores", "ch05.rel_shift", "ch05.length_drop"),
        tasks=("markov_period",),
        bib_keys=("sugiharto2023rcmha", "so2021primer", "dai2019transformerxl"),
    ),
    Chapter(
        number="06",
        slug="spectral-mixing",
        title="Spectral mixing before attention",
        mechanism="FFT gating layers before attention layers",
        paper="SpectFormer 2023",
        status="written",
        checks=("ch06.spectral_gating", "ch06.filter_kernel", "ch06.shift_filter", "ch06.frequency_accuracy"),
        tasks=("grating_squares",),
        bib_keys=("patro2023spectformer", "rao2021gfnet", "dosovitskiy2021vit"),
    ),
    Chapter(
        number="07",
        slug="mixture-of-heads",
        title="Mixture of heads",
        mechanism="a router picks the top-k heads",
        paper="MoH 2024",
        status="written",
        checks=(
            "ch07.moh_gates",
            "ch07.load_balance_loss",
            "ch07.gated_heads",
            "ch07.head_load",
            "ch07.moh_accuracy",
        ),
        tasks=("typed_copy",),
        bib_keys=("jin2024moh",),
    ),
    Chapter(
        number="08",
        slug="multi-branch-pooling",
        title="Multi-branch attention pooling",
        mechanism="multiple-branch attention pooling, stochastic top-K masking",
        paper="ACMIL 2023",
        status="written",
        checks=(
            "ch08.multi_branch_attention",
            "ch08.stkim_mask",
            "ch08.diversity_loss",
            "ch08.acmil_loss",
            "ch08.stkim_experiment",
        ),
        tasks=("shortcut_bags",),
        bib_keys=("zhang2023attentionchallenging", "ilse2018attention"),
    ),
    Chapter(
        number="09",
        slug="multi-scale-heads",
        title="Multi-scale heads",
        mechanism="one attention body, heads feeding several scales",
        paper="MEDUSA 2021",
        status="written",
        checks=(
            "ch09.gate",
            "ch09.medusa_heads",
            "ch09.zscore_image",
            "ch09.attention_iou",
            "ch09.receptive_field",
        ),
        tasks=("radiographs",),
        bib_keys=("aboutalebi2021medusa", "woo2018cbam", "ronneberger2015unet"),
    ),
    Chapter(
        number="10",
        slug="task-injection",
        title="Task injection into heads",
        mechanism="task embeddings mixed into head activations",
        paper="Soft Injection 2025",
        status="written",
        checks=("ch10.task_embedding", "ch10.soft_inject", "ch10.optimize_alpha", "ch10.embedding_error"),
        tasks=("task_prompts",),
        bib_keys=("park2025soft", "todd2024function"),
    ),
    Chapter(
        number="11",
        slug="head-importance",
        title="Head importance",
        mechanism="pruning-based head importance, attention distance",
        paper="Visual analytics of ViTs 2023",
        status="written",
        checks=(
            "ch11.masked_mha",
            "ch11.distance_profile",
            "ch11.taylor_importance",
            "ch11.recenter",
            "ch11.pruning_experiment",
        ),
        tasks=("shape_patches",),
        bib_keys=("li2023how", "michel2019sixteen", "dosovitskiy2021vit"),
    ),
    Chapter(
        number="12",
        slug="retrieval-heads",
        title="Retrieval heads",
        mechanism="retrieval score, needle in a haystack",
        paper="Retrieval Head 2024",
        status="written",
        checks=("ch12.retrieval_score", "ch12.ablated_attention", "ch12.masking_curve", "ch12.chance_score"),
        tasks=("associative_recall",),
        bib_keys=("olsson2022incontext", "wu2024retrieval"),
    ),
    Chapter(
        number="13",
        slug="attention-sinks",
        title="Attention sinks and their redistribution (VAR)",
        mechanism="massive activations, sink tokens",
        paper="Visual Attention Sink 2025",
        status="written",
        tasks=("object_captions",),
        checks=(
            "ch13.sink_mask",
            "ch13.image_centric",
            "ch13.redistribute",
            "ch13.var_heads",
            "ch13.ablation_accuracy",
        ),
        bib_keys=("kang2025see", "xiao2023efficient", "sun2024massive", "darcet2024vision"),
    ),
    Chapter(
        number="14",
        slug="vision-aware-heads",
        title="Vision-aware heads",
        mechanism="head divergence with and without context",
        paper="VHD/VHR 2024; Imbalanced Attention 2025",
        status="written",
        checks=(
            "ch14.vhd",
            "ch14.select_vision_heads",
            "ch14.chair_i",
            "ch14.vhr_step",
            "ch14.filter_experiment",
        ),
        bib_keys=("he2024cracking", "arif2025fixing"),
    ),
    Chapter(
        number="15",
        slug="attention-vs-saliency",
        title="Attention versus saliency",
        mechanism="cross-attention vs gradient saliency",
        paper="Cross-Attention is Half Explanation 2025",
        status="written",
        checks=(
            "ch15.aggregate_ca",
            "ch15.reduce_saliency",
            "ch15.occlusion_saliency",
            "ch15.pearson_flat",
            "ch15.mixing_gap",
        ),
        bib_keys=("papi2025crossattention", "fucci2024spes", "petsiuk2018rise"),
    ),
    Chapter(
        number="16",
        slug="head-perturbation-guidance",
        title="Head perturbation guidance",
        mechanism="perturb selected heads toward identity",
        paper="HeadHunter / SoftPAG 2025",
        status="written",
        checks=(
            "ch16.softpag_attention",
            "ch16.guided_eps",
            "ch16.headhunter_step",
            "ch16.ddim_step",
            "ch16.memory_guidance",
        ),
        bib_keys=("ahn2025finegrained", "ahn2024pag", "song2021ddim", "hong2024seg"),
    ),
    Chapter(
        number="17",
        slug="object-level-attention",
        title="Object-level attention",
        mechanism="object tokens, spatial encoding, scanpaths",
        paper="OAT 2024",
        status="draft",
        checks=(
            "ch17.fit_gaussian_pe",
            "ch17.object_tokens",
            "ch17.pointer_logits",
            "ch17.normalized_levenshtein",
        ),
        bib_keys=("fang2024oat",),
    ),
    Chapter(
        number="18",
        slug="shifted-windows",
        title="Shifted windows",
        mechanism="window and shifted-window attention",
        paper="HiDiffusion 2023",
        status="draft",
        checks=("ch18.msw_partition", "ch18.msw_reverse", "ch18.msw_mask", "ch18.share_prob"),
        bib_keys=("zhang2023hidiffusion", "liu2021swin"),
    ),
    Chapter(
        number="19",
        slug="varied-windows",
        title="Varied windows",
        mechanism="learned window size and location",
        paper="VSA 2022; VWA 2024",
        status="draft",
        checks=("ch19.vsa_grid", "ch19.vsa_attention", "ch19.copy_shift_pad", "ch19.space_to_depth"),
        bib_keys=("zhang2022vsa", "yan2024multiscale"),
    ),
    Chapter(
        number="20",
        slug="hilo",
        title="HiLo attention",
        mechanism="local high-frequency heads + pooled low-frequency heads",
        paper="HiLo 2022",
        bib_keys=("pan2022fast",),
    ),
    Chapter(
        number="21",
        slug="neighborhood",
        title="Neighborhood attention",
        mechanism="neighborhood attention with dilation, as GEMMs",
        paper="Faster Neighborhood Attention 2024",
        bib_keys=("hassani2024faster", "hassani2023neighborhood"),
    ),
    Chapter(
        number="22",
        slug="learned-sparsity",
        title="Learned sparsity",
        mechanism="predicted connectivity masks; value-driven dynamic masks",
        paper="Sparsifiner 2023; DMA 2025",
        bib_keys=("wei2023sparsifiner", "shi2025trainable"),
    ),
    Chapter(
        number="23",
        slug="token-summaries",
        title="Token summaries",
        mechanism="summarising patch tokens",
        paper="MULTI-LANE 2024",
        bib_keys=("demin2024less",),
    ),
    Chapter(
        number="24",
        slug="chunk-selection",
        title="Chunk selection",
        mechanism="each head attends to a few selected chunks",
        paper="LongHeads 2024",
        bib_keys=("lu2024longheads",),
    ),
    Chapter(
        number="25",
        slug="retrieval-streaming-heads",
        title="Retrieval and streaming heads",
        mechanism="full cache for retrieval heads, sink + window for the rest",
        paper="DuoAttention 2024",
        bib_keys=("xiao2024duoattention",),
    ),
    Chapter(
        number="26",
        slug="mixture-of-sparse",
        title="Mixture of sparse attention",
        mechanism="per-head window spans under a budget",
        paper="MoA 2024",
        bib_keys=("fu2024moa",),
    ),
    Chapter(
        number="27",
        slug="multi-step-search",
        title="Multi-step search attention",
        mechanism="span search, then span attention",
        paper="Superlinear Multi-Step Attention 2026",
        bib_keys=("huang2026superlinear",),
    ),
    Chapter(
        number="28",
        slug="distributed-attention",
        title="Distributed attention",
        mechanism="head-parallel and ring attention",
        paper="A Unified View of Long-Sequence Models 2023",
        bib_keys=("he2023unified", "liu2023ring", "jacobs2023deepspeed"),
    ),
    Chapter(
        number="29",
        slug="fused-attention-kernel",
        title="Fused attention kernels: FlashAttention in Triton",
        mechanism="FlashAttention in Triton, forward and backward",
        paper="FlashAttention 1/2",
        status="written",
        checks=(
            "ch29.online_softmax_update",
            "ch29.blocked_attention",
            "ch29.attention_backward",
            "ch29.triton_attention_forward",
            "ch29.measured_peak_memory",
        ),
        bib_keys=(
            "dao2022flashattention",
            "milakov2018online",
            "rabe2021selfattention",
            "dao2023flashattention2",
            "shah2024flashattention3",
            "tillet2019triton",
            "hassani2024faster",
        ),
    ),
    Chapter(
        number="30",
        slug="fused-neighborhood-kernel",
        title="A fused neighborhood attention kernel",
        mechanism="fused neighborhood attention in Triton",
        paper="Faster Neighborhood Attention 2024",
        bib_keys=("hassani2024faster",),
    ),
)

_BY_NUMBER = {c.number: c for c in CHAPTERS}


def by_number(number: str | int) -> Chapter:
    """The chapter numbered ``number`` ("05", "5" or 5)."""
    key = str(number).strip()
    if key.isdigit():
        key = f"{int(key):02d}"
    if key not in _BY_NUMBER:
        first, last = CHAPTERS[0].number, CHAPTERS[-1].number
        raise KeyError(f"no chapter {number!r} in the manifest; chapters are {first}..{last}")
    return _BY_NUMBER[key]
