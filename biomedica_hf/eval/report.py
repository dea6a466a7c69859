"""Reports from result dicts: Markdown tables per domain, model-index YAML, plots, run comparison."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

ZS_COLUMNS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."), ("macro_f1", "macro-F1"))
RETRIEVAL_KS = (1, 5, 10, 100)


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals ('-' when missing)."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def flat_metrics(result: dict) -> dict[str, float]:
    """One level of scalar metrics for a task result (retrieval directions prefixed ``i2t_`` / ``t2i_``)."""
    m = result["metrics"]
    if result["kind"] == "retrieval":
        out = {"mean_recall": m["mean_recall"]}
        for short, key in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
            out.update({f"{short}_{k}": v for k, v in m[key].items() if k != "n_queries"})
        return out
    return {k: m[k] for k, _ in ZS_COLUMNS}


def domain_summary(results: Sequence[dict]) -> dict[str, dict]:
    """Unweighted means over the tasks of each domain (every task counts once)."""
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_domain[r["domain"]].append(flat_metrics(r) | {"primary": r["primary"]})
    out = {}
    for domain, rows in sorted(by_domain.items()):
        keys = rows[0].keys()
        out[domain] = {"n_tasks": len(rows), **{k: sum(r[k] for r in rows) / len(rows) for k in keys}}
    return out


def markdown_report(model: str, results: Sequence[dict]) -> str:
    """A Markdown table per domain with its average row, then a table of domain averages."""
    lines = [f"# Evaluation of `{model}`", ""]
    zs = [r for r in results if r["kind"] == "zero-shot"]
    ret = [r for r in results if r["kind"] == "retrieval"]
    domains = domain_summary(results)
    for domain in sorted({r["domain"] for r in zs}):
        rows = [r for r in zs if r["domain"] == domain]
        lines += [f"## {domain}", "", "| task | images | classes | " + " | ".join(h for _, h in ZS_COLUMNS) + " |",
                  "|---|---:|---:|" + "---:|" * len(ZS_COLUMNS)]
        for r in rows:
            lines.append(f"| {r['task']} | {r['n']} | {len(r['classes'])} | "
                         + " | ".join(pct(r["metrics"][k]) for k, _ in ZS_COLUMNS) + " |")
        d = domains[domain]
        plural = "s" if d["n_tasks"] != 1 else ""
        lines += [f"| **average** ({d['n_tasks']} task{plural}) | | | "
                  + " | ".join(f"**{pct(d[k])}**" for k, _ in ZS_COLUMNS) + " |", ""]
    if ret:
        heads = [f"{d} R@{k}" for d in ("I→T", "T→I") for k in RETRIEVAL_KS]
        lines += ["## retrieval", "", "| task | pairs | " + " | ".join(heads) + " | I→T mean rank | T→I mean rank |",
                  "|---|---:|" + "---:|" * (len(heads) + 2)]
        for r in ret:
            m = r["metrics"]
            vals = [pct(m[d][f"R@{k}"]) for d in ("image_to_text", "text_to_image") for k in RETRIEVAL_KS]
            lines.append(f"| {r['task']} | {r['n']} | " + " | ".join(vals)
                         + f" | {m['image_to_text']['mean_rank']:.1f} | {m['text_to_image']['mean_rank']:.1f} |")
        lines.append("")
    lines += ["## by domain", "", "| domain | tasks | primary metric | mean |", "|---|---:|---|---:|"]
    for domain, d in domains.items():
        metric = "mean recall (R@1/10/100, both directions)" if domain == "retrieval" else "accuracy"
        lines.append(f"| {domain} | {d['n_tasks']} | {metric} | {pct(d['primary'])} |")
    if zs:
        lines.append(f"| **zero-shot, all tasks** | {len(zs)} | accuracy | "
                     f"**{pct(sum(r['primary'] for r in zs) / len(zs))}** |")
    lines += ["", "Percentages; ties count against the model (see `biomedica_hf.eval.metrics`).", ""]
    return "\n".join(lines)


def _yaml_str(s: str) -> str:
    return json.dumps(str(s), ensure_ascii=False)    # a JSON string is a valid YAML double-quoted scalar


def model_index_yaml(model: str, results: Sequence[dict]) -> str:
    """The ``model-index`` block of a model card (metric values in percent)."""
    lines = ["model-index:", f"- name: {_yaml_str(model)}", "  results:"]
    for r in results:
        if r["kind"] == "retrieval":
            task_type, task_name = "image-text-retrieval", "Image-text retrieval"
            metrics = [(f"recall@{k}_{d}", f"Recall@{k} ({label})", r["metrics"][key][f"R@{k}"])
                       for key, d, label in (("image_to_text", "i2t", "image to text"),
                                             ("text_to_image", "t2i", "text to image"))
                       for k in RETRIEVAL_KS]
        else:
            task_type, task_name = "zero-shot-image-classification", "Zero-shot image classification"
            metrics = [("accuracy", "Accuracy", r["metrics"]["accuracy"]),
                       ("balanced_accuracy", "Balanced accuracy", r["metrics"]["balanced_accuracy"]),
                       ("f1", "Macro F1", r["metrics"]["macro_f1"])]
        lines += ["  - task:", f"      type: {task_type}", f"      name: {_yaml_str(task_name)}",
                  "    dataset:", f"      name: {_yaml_str(r['dataset']['name'])}",
                  f"      type: {_yaml_str(r['dataset']['type'])}"]
        if r["dataset"].get("split"):
            lines.append(f"      split: {_yaml_str(r['dataset']['split'])}")
        lines.append("    metrics:")
        for mtype, mname, value in metrics:
            v = "null" if value is None or math.isnan(value) else f"{100 * value:.2f}"
            lines += [f"    - type: {mtype}", f"      value: {v}", f"      name: {_yaml_str(mname)}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_domains(summary: dict, path: Path) -> Path:
    """Bars per domain (mean primary metric) and per task (balanced accuracy against its 1/K chance)."""
    plt = _plt()
    domains = summary["domains"]
    names = list(domains)
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3, 0.35 * len(summary["tasks"]) + 1)),
                             gridspec_kw={"width_ratios": [1, 1.4]})
    axes[0].bar(names, [100 * domains[d]["primary"] for d in names], color="#4C72B0")
    axes[0].set_ylabel("accuracy (zero-shot) / mean recall (%)")
    axes[0].set_title("by domain")
    axes[0].tick_params(axis="x", rotation=30)
    tasks = summary["tasks"]
    tnames = list(tasks)
    values = [tasks[t]["metrics"].get("balanced_accuracy", tasks[t]["primary"]) for t in tnames]
    axes[1].barh(tnames, [100 * v for v in values], color="#55A868")
    for i, t in enumerate(tnames):
        chance = tasks[t].get("chance")
        if chance:
            axes[1].plot([100 * chance] * 2, [i - 0.4, i + 0.4], color="k", lw=1)
    axes[1].invert_yaxis()
    axes[1].set_xlabel("balanced accuracy / retrieval mean recall (%); tick = chance 1/K")
    axes[1].set_title("by task")
    fig.suptitle(summary["model"])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(a: dict, b: dict, path: Path) -> Path:
    """Grouped bars: model A vs model B per domain (primary metric over the tasks both ran)."""
    plt = _plt()
    common = [t for t in a["tasks"] if t in b["tasks"]]
    doms = sorted({a["tasks"][t]["domain"] for t in common})

    def mean(run, d):
        vals = [run["tasks"][t]["primary"] for t in common if run["tasks"][t]["domain"] == d]
        return 100 * sum(vals) / len(vals)

    x = range(len(doms))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(doms) + 2), 4))
    ax.bar([i - 0.2 for i in x], [mean(a, d) for d in doms], 0.4, label=a["model"])
    ax.bar([i + 0.2 for i in x], [mean(b, d) for d in doms], 0.4, label=b["model"])
    ax.set_xticks(list(x), doms, rotation=30)
    ax.set_ylabel("mean primary metric (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------- compare
def compare_markdown(a: dict, b: dict) -> str:
    """Per-task and per-domain deltas (B - A, percentage points) of two run summaries."""
    common = [t for t in a["tasks"] if t in b["tasks"]]
    lines = [f"# `{b['model']}` vs `{a['model']}`", "", "Δ = B − A in percentage points.", "",
             "| task | domain | metric | A | B | Δ |", "|---|---|---|---:|---:|---:|"]
    for t in common:
        ta, tb = a["tasks"][t], b["tasks"][t]
        lines.append(f"| {t} | {ta['domain']} | {ta['primary_metric']} | {pct(ta['primary'])} | {pct(tb['primary'])} | "
                     f"{100 * (tb['primary'] - ta['primary']):+.2f} |")
    lines += ["", "| domain | tasks | A | B | Δ |", "|---|---:|---:|---:|---:|"]
    for d in sorted({a["tasks"][t]["domain"] for t in common}):
        ts = [t for t in common if a["tasks"][t]["domain"] == d]
        ma = sum(a["tasks"][t]["primary"] for t in ts) / len(ts)
        mb = sum(b["tasks"][t]["primary"] for t in ts) / len(ts)
        lines.append(f"| {d} | {len(ts)} | {pct(ma)} | {pct(mb)} | {100 * (mb - ma):+.2f} |")
    only_a = [t for t in a["tasks"] if t not in b["tasks"]]
    only_b = [t for t in b["tasks"] if t not in a["tasks"]]
    if only_a or only_b:
        lines += ["", f"Not compared (only in A): {', '.join(only_a) or '-'}; (only in B): {', '.join(only_b) or '-'}."]
    return "\n".join(lines) + "\n"
