"""run/report.md and its plots, from what the stages left in the run directory.

Reads eval/results.json (methods and per-problem results), timings.json (wall time per stage),
clusters/meta.json, experts/*/train_log.json, hypernet/summary.json and
eval/gates_customized.json; writes plots/pass_at_1.png and plots/gates.png and links the plots
earlier stages drew (clusters, k sweep, Tune curves, expert losses). Any part whose inputs are
missing is left out, so a partial run still gets a report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..rundir import RunDir, atomic_write_text
from .methods import (
    PAIRED_HEADER,
    REFERENCE,
    common_problems_table,
    ordered_methods,
    paired_rows,
    with_intervals,
)
from .stats import ci_text


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _num(x: Any, digits: int = 5) -> Any:
    return round(x, digits) if isinstance(x, float) else x


def _rounded(d: Any) -> Any:
    return {k: _num(v, 4) for k, v in d.items()} if isinstance(d, dict) else d


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def plot_pass_at_1(methods: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = ordered_methods(methods)
    p1 = [methods[m].get("pass@1", 0.0) for m in names]
    pr = [methods[m].get("pass_rate", 0.0) for m in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.2))

    def err(key: str, values: list[float]) -> np.ndarray | None:
        cis = [methods[m].get(key) for m in names]
        if not all(isinstance(c, list | tuple) and len(c) == 2 for c in cis):
            return None
        return np.array([[v - c[0] for v, c in zip(values, cis, strict=True)],
                         [c[1] - v for v, c in zip(values, cis, strict=True)]]).clip(0)  # fmt: skip

    bars = dict(capsize=3, error_kw={"elinewidth": 0.8})  # the 95% intervals, where recorded
    ax.bar(x - 0.2, p1, 0.4, yerr=err("pass@1_ci95", p1), label="pass@1 (AC)", color="#3b6ea8",
           **bars)  # fmt: skip
    ax.bar(x + 0.2, pr, 0.4, yerr=err("pass_rate_ci95", pr), label="pass rate",
           color="#9cc3e6", **bars)  # fmt: skip
    for xi, v, n in zip(x, p1, names, strict=True):
        ax.text(xi - 0.2, v + 0.01, f"{v:.2f}\nn={methods[n].get('n', '?')}", ha="center",
                va="bottom", fontsize=7)  # fmt: skip
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, max(1.0, max(p1 + pr, default=0) + 0.15))
    ax.set_ylabel("fraction of test problems / tests")
    ax.set_title("Methods on the test split")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def gate_matrix(gates: dict[str, Any]) -> tuple[list[str], list[str], list[int], list[list[float]]]:
    """(problem ids, experts, category per problem, weights) from eval/gates_customized.json,
    problems sorted by category (their nearest cluster)."""
    rows = []
    for pid, g in gates.items():
        weights = g.get("gates", g)  # also the older {expert: weight} form
        rows.append((g.get("nearest_cluster", -1), pid, weights))
    rows.sort(key=lambda r: (r[0], r[1]))
    experts = list(rows[0][2]) if rows else []
    return (
        [r[1] for r in rows],
        experts,
        [r[0] for r in rows],
        [[r[2][e] for e in experts] for r in rows],
    )


def plot_gates(gates: dict[str, Any], path: Path) -> Path:
    """Heat maps of the customised solver's expert weights: per test problem (grouped by its
    category, the nearest cluster), and averaged per category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pids, experts, cats, w = gate_matrix(gates)
    w = np.asarray(w, dtype=float)
    labels = sorted(set(cats))
    means = np.stack([w[[c == lab for c in cats]].mean(0) for lab in labels])
    fig, (a1, a2) = plt.subplots(
        1, 2, figsize=(9, max(3.0, 0.22 * len(pids) + 1.5)), gridspec_kw={"width_ratios": [1, 1]}
    )
    im = a1.imshow(w, aspect="auto", cmap="viridis", vmin=0, vmax=1)  # shares: 1/K = mean
    a1.set_yticks(range(len(pids)), [f"{p} (c{c})" for p, c in zip(pids, cats, strict=True)],
                  fontsize=6)  # fmt: skip
    a1.set_xticks(range(len(experts)), experts, rotation=30, ha="right")
    if len(pids) <= 40:
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                a1.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", color="w", fontsize=6)
    a1.set_title("expert weight per test problem")
    fig.colorbar(im, ax=a1, fraction=0.046)
    im2 = a2.imshow(means, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    counts = [cats.count(lab) for lab in labels]
    a2.set_yticks(range(len(labels)),
                  [f"nearest cluster_{lab} (n={n})" for lab, n in zip(labels, counts, strict=True)])  # fmt: skip
    a2.set_xticks(range(len(experts)), experts, rotation=30, ha="right")
    for i in range(means.shape[0]):
        for j in range(means.shape[1]):
            a2.text(j, i, f"{means[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    a2.set_title("mean weight per problem category")
    fig.colorbar(im2, ax=a2, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _provenance(meta: dict[str, Any]) -> str:
    """Where the training examples came from: the search's verified traces, or the train
    split's reference solutions (a supplement the config turns on)."""
    by = meta.get("by_source")
    if not by:
        return ""
    return (f" ({by.get('search', 0)} from search traces verified on hidden tests, "
            f"{by.get('reference', 0)} from reference solutions)")  # fmt: skip


def write_report(run: RunDir) -> Path:
    """Write run/report.md (and its plots); returns its path."""
    root = run.root
    results = run.load_results()
    methods = with_intervals(results)
    plots = root / "plots"
    lines = [f"# BDC run report: `{root.name}`", ""]
    try:
        import yaml

        config = yaml.safe_load((root / "config.yaml").read_text())
    except (OSError, ImportError, ValueError):
        config = None
    if config:
        base = config.get("models", {}).get(config.get("base_model"), {})
        data, search = config.get("data", {}), config.get("search", {})
        lines += [
            f"Base model `{base.get('path')}` ({base.get('backend')}); data `{data.get('source')}` "
            f"(max_train {data.get('max_train')}, max_test {data.get('max_test')}); search width "
            f"{search.get('width')}, trials {search.get('trials')}, rollouts {search.get('rollouts')}; "
            f"clusters k={config.get('cluster', {}).get('k')}. Full config: `config.yaml`.",
            "",
        ]
    if methods:
        names = ordered_methods(methods)
        rows = [
            [
                f"`{m}`",
                ci_text(methods[m].get("pass@1", 0), methods[m].get("pass@1_ci95")),
                ci_text(methods[m].get("pass_rate", 0), methods[m].get("pass_rate_ci95")),
                methods[m].get("n"),
                methods[m].get("completion_tokens"),
                methods[m].get("wall_s", methods[m].get("generate_s")),
            ]
            for m in names
        ]
        lines += [
            "## Methods (test split, greedy, complete tests)",
            "",
            markdown_table(
                ["method", "pass@1 [95% CI]", "pass rate [95% CI]", "n", "tokens", "wall s"], rows
            ),  # fmt: skip
            "",
            "Intervals: Wilson for pass@1, a bootstrap over problems for the pass rate. With "
            "a few dozen problems they are wide: rows whose intervals overlap may not differ.",
            "",
        ]
        versus = paired_rows(results)
        if versus:
            lines += [
                f"### Against `{REFERENCE}` on the problems both ran",
                "",
                markdown_table(PAIRED_HEADER, versus),
                "",
                "Only it / only ref: problems solved by the method and not by the reference, and "
                "the reverse; the exact sign test on them is McNemar's. A p below 0.05 and a "
                "pass-rate interval without 0 mark a difference beyond chance.",
                "",
            ]
        same = common_problems_table(results)
        if same:
            lines += [
                f"Methods ran on different problem sets; on the {len(same[0])} problems every "
                "method ran:",
                "",
                "```",
                same[1],
                "```",
                "",
            ]
        if "mcts" in methods:
            m = methods["mcts"]
            stats = {k: m[k] for k in ("nodes", "pruned", "refined", "llm_calls", "executions")
                     if k in m}  # fmt: skip
            if stats:
                lines += ["Search (mcts): " + ", ".join(f"{k} {v}" for k, v in stats.items()), ""]
            per_split = m.get("search")
            if per_split:
                keys = list(next(iter(per_split.values())))
                lines += [
                    "What the trees did (selections below the root and backups of more than one "
                    "level show the tree search at work):",
                    "",
                    markdown_table(["split", *keys],
                                   [[s, *(c.get(k) for k in keys)] for s, c in per_split.items()]),
                    "",
                ]  # fmt: skip
            if "train_passed_hidden" in m:
                keep = (config or {}).get("search", {}).get("keep_without_hidden")
                lines += [
                    f"Train problems verified on hidden tests: {m['train_passed_hidden']}; "
                    f"without hidden tests: {m.get('train_without_hidden', 0)} (passed their "
                    f"public tests only: {m.get('train_passed_public_only', 0)}, "
                    f"{'kept' if keep else 'not kept'} as training data).",
                    "",
                ]
        plot_pass_at_1(methods, plots / "pass_at_1.png")
        lines += ["![pass@1 per method](plots/pass_at_1.png)", ""]
    timings = _load(root / "timings.json")
    if timings:
        rows = []
        for stage, t in timings.items():
            t = t if isinstance(t, dict) else {"wall_s": t}
            rows.append(
                [stage, t.get("wall_s"), "skipped (outputs up to date)" if t.get("skipped") else ""]
            )
        lines += [
            "## Wall time per stage",
            "",
            markdown_table(["stage", "s", "last run"], rows),
            "",
        ]
    meta = _load(root / "clusters" / "meta.json")
    if meta:
        lines += [
            "## Disentangle",
            "",
            f"{meta.get('examples')} examples{_provenance(meta)}, k={meta.get('k')} clusters of sizes "
            f"{meta.get('sizes')}, silhouette "
            f"{meta['silhouette'] if meta.get('silhouette') is None else round(meta['silhouette'], 3)}.",
            "",
        ]
        for name in ("clusters.png", "k_sweep.png"):
            if (plots / name).is_file():
                lines += [f"![{name}](plots/{name})", ""]
    logs = (
        sorted((root / "experts").glob("*/train_log.json")) if (root / "experts").is_dir() else []
    )
    if logs:
        rows = []
        for p in logs:
            log = _load(p) or {}
            rows.append([f"`{p.parent.name}`", log.get("examples"), log.get("steps"),
                         log.get("first_loss") and round(log["first_loss"], 4),
                         log.get("final_loss") and round(log["final_loss"], 4),
                         log.get("tokens_per_s"), log.get("wall_s")])  # fmt: skip
        lines += [
            "## Experts (Ray Train + DeepSpeed, LoRA)",
            "",
            markdown_table(
                ["expert", "examples", "steps", "first loss", "final loss", "tokens/s", "wall s"],
                rows,
            ),
            "",
            "Loss curves: "
            + ", ".join(f"[{p.parent.name}](experts/{p.parent.name}/loss.png)" for p in logs),
            "",
        ]
    merges = sorted((root / "experts").glob("merged_*/merge.json")) if logs else []
    if merges:
        lines += ["Merges of the cluster experts (baselines):", ""]
        for p in merges:
            rec = _load(p) or {}
            how = f"peft `{rec.get('combination_type')}` on the {rec.get('acts_on', '?')}"
            if rec.get("svd_rank"):
                how += f", density {rec.get('density')}, reduced to rank {rec['svd_rank']} by SVD"
            lines.append(f"- `{p.parent.name}`: {how}")
        lines.append("")
    summary = _load(root / "hypernet" / "summary.json")
    if summary:
        lines += [
            "## Customize (hypernetwork, Ray Tune)",
            "",
            f"{summary.get('trials')} trials ({summary.get('failed_trials')} failed); best "
            f"validation loss {_num(summary.get('best_val_loss'))} vs the experts' mean "
            f"{_num(summary.get('mean_experts_val_loss'))}; best config "
            f"`{json.dumps(_rounded(summary.get('best_config')))}`.",
            "",
        ]
        if (plots / "tune.png").is_file():
            lines += ["![Tune curves](plots/tune.png)", ""]
    gates = _load(root / "eval" / "gates_customized.json")
    if gates:
        plot_gates(gates, plots / "gates.png")
        lines += [
            "Expert weights the hypernetwork chose per test problem, grouped by the problem's "
            "nearest cluster:",
            "",
            "![gates](plots/gates.png)",
            "",
        ]
    versions = results.get("versions")
    if versions:
        lines += ["## Software", "",
                  ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]  # fmt: skip
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
