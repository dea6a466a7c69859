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


KAPPA = ("quadratic_kappa", "QWK")
METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1",
                 "quadratic_kappa": "quadratic weighted kappa", "mean_recall": "mean recall (R@1/10/100, both ways)"}


def fmt_metric(key: str, x: float | None) -> str:
    """Percent for rates, a plain 3-decimal number for kappa (which lies in [-1, 1])."""
    if key.startswith("quadratic_kappa"):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
    return pct(x)


def flat_metrics(result: dict) -> dict[str, float]:
    """One level of scalar metrics for a task result (retrieval directions prefixed ``i2t_`` / ``t2i_``;
    few-shot: the headline k's values plus ``k<k>_<metric>`` and ``..._std`` for every k)."""
    m = result["metrics"]
    if result["kind"] == "retrieval":
        out = {"mean_recall": m["mean_recall"]}
        for short, key in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
            out.update({f"{short}_{k}": v for k, v in m[key].items() if k != "n_queries"})
        return out
    out = {k: m[k] for k in (*(k for k, _ in ZS_COLUMNS), KAPPA[0]) if k in m}
    if result["kind"] == "few-shot":
        for k, v in m["shots"].items():
            out.update({f"k{k}_{name}": val for name, val in v.items() if isinstance(val, float)})
    return out


def domain_summary(results: Sequence[dict]) -> dict[str, dict]:
    """Unweighted means over the zero-shot / retrieval tasks of each domain (every task counts once).

    Linear-probe and few-shot results have their own tables and are not averaged in.
    """
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if r["kind"] in ("zero-shot", "retrieval"):
            by_domain[r["domain"]].append(flat_metrics(r) | {"primary": r["primary"]})
    out = {}
    for domain, rows in sorted(by_domain.items()):
        keys = [k for k in rows[0] if all(k in r for r in rows)]
        out[domain] = {"n_tasks": len(rows), **{k: sum(r[k] for r in rows) / len(rows) for k in keys}}
    return out


def _probe_sections(results: Sequence[dict]) -> list[str]:
    lines = []
    lp = [r for r in results if r["kind"] == "linear-probe"]
    if lp:
        lines += ["## linear probe", "", "Logistic regression on frozen image embeddings (C chosen on val).", "",
                  "| task | dataset | train / val / test | C | accuracy | balanced acc. | macro-F1 | QWK |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in lp:
            m, sp = r["metrics"], r["splits"]
            lines.append(f"| {r['base_task']} | {r['dataset']['type']} | {sp['train']} / {sp['val']} / {sp['test']} | "
                         f"{r['C']:g} | {pct(m['accuracy'])} | {pct(m['balanced_accuracy'])} | {pct(m['macro_f1'])} | "
                         f"{fmt_metric('quadratic_kappa', m.get('quadratic_kappa'))} |")
        lines.append("")
    fs = [r for r in results if r["kind"] == "few-shot"]
    if fs:
        ks = sorted({int(k) for r in fs for k in r["metrics"]["shots"]})
        lines += ["## few-shot", "", "Mean ± s.d. over seeds of a logistic regression on k train images per class, "
                  "scored on the split named in the table.", "",
                  "| task | split | metric | " + " | ".join(f"k={k}" for k in ks) + " |",
                  "|---|---|---|" + "---:|" * len(ks)]
        for r in fs:
            shots = r["metrics"]["shots"]
            for key in dict.fromkeys([r["primary_metric"], "balanced_accuracy"]):
                cells = []
                for k in ks:
                    v = shots.get(str(k))
                    cells.append("-" if not v or key not in v else
                                 f"{fmt_metric(key, v[key])} ± {fmt_metric(key, v[key + '_std'])}")
                lines.append(f"| {r['base_task']} | {r['dataset'].get('split', '?')} | {METRIC_LABELS.get(key, key)} | "
                             + " | ".join(cells) + " |")
        lines.append("")
        for r in fs:
            for k, v in sorted(r["metrics"]["shots"].items(), key=lambda kv: int(kv[0])):
                if v.get("k_per_class"):
                    lines.append(f"* {r['base_task']}, k={k}: " + ", ".join(
                        f"{c} {n}" for c, n in v["k_per_class"].items()) + " train images per class")
            for k, why in (r.get("shots_skipped") or {}).items():
                lines.append(f"* {r['base_task']}, k={k}: **skipped** ({why['reason']})")
        lines.append("")
    return lines


def markdown_report(model: str, results: Sequence[dict]) -> str:
    """A Markdown table per domain with its average row, then a table of domain averages."""
    lines = [f"# Evaluation of `{model}`", ""]
    zs = [r for r in results if r["kind"] == "zero-shot"]
    ret = [r for r in results if r["kind"] == "retrieval"]
    domains = domain_summary(results)
    for domain in sorted({r["domain"] for r in zs}):
        rows = [r for r in zs if r["domain"] == domain]
        kappa = any(KAPPA[0] in r["metrics"] for r in rows)
        cols = list(ZS_COLUMNS) + ([KAPPA] if kappa else [])
        lines += [f"## {domain}", "", "| task | dataset | images | classes | " + " | ".join(h for _, h in cols) + " |",
                  "|---|---|---:|---:|" + "---:|" * len(cols)]
        for r in rows:
            lines.append(f"| {r['task']} | {r['dataset']['type']} | {r['n']} | {len(r['classes'])} | "
                         + " | ".join(fmt_metric(k, r["metrics"].get(k)) for k, _ in cols) + " |")
        d = domains[domain]
        plural = "s" if d["n_tasks"] != 1 else ""
        lines += [f"| **average** ({d['n_tasks']} task{plural}) | | | | "
                  + " | ".join(f"**{fmt_metric(k, d.get(k))}**" for k, _ in cols) + " |", ""]
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
    lines += _probe_sections(results)
    lines += ["## by domain", "", "| domain | tasks | primary metric | mean |", "|---|---:|---|---:|"]
    for domain, d in domains.items():
        used = sorted({r["primary_metric"] for r in results if r["domain"] == domain
                       and r["kind"] in ("zero-shot", "retrieval")})
        metric = ", ".join(METRIC_LABELS.get(m, m) for m in used)
        value = fmt_metric(used[0], d["primary"]) if len(used) == 1 else pct(d["primary"])
        lines.append(f"| {domain} | {d['n_tasks']} | {metric} | {value} |")
    if zs:
        lines.append(f"| **zero-shot, all tasks** | {len(zs)} | balanced accuracy | "
                     f"**{pct(sum(r['metrics']['balanced_accuracy'] for r in zs) / len(zs))}** |")
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
        elif r["kind"] == "few-shot":
            task_type, task_name = "image-classification", "Few-shot linear probe (frozen image embeddings)"
            metrics = []
            for k, v in r["metrics"]["shots"].items():
                per = v.get("k_per_class")
                seeds = (f"{k} per class, " if per and set(per.values()) == {int(k)} else "") + f"mean of {v['seeds']} seeds"
                metrics += [("accuracy", f"{k}-shot accuracy ({seeds})", v["accuracy"]),
                            ("balanced_accuracy", f"{k}-shot balanced accuracy ({seeds})",
                             v["balanced_accuracy"])]
                if "quadratic_kappa" in v:
                    metrics.append(("cohen_kappa", f"{k}-shot quadratic weighted kappa ({seeds})",
                                    v["quadratic_kappa"]))
        else:
            task_type, task_name = (("image-classification", ("Linear probe (logistic regression on frozen image "
                                                              "embeddings)")) if r["kind"] == "linear-probe" else
                                    ("zero-shot-image-classification", "Zero-shot image classification"))
            metrics = [("accuracy", "Accuracy", r["metrics"]["accuracy"]),
                       ("balanced_accuracy", "Balanced accuracy", r["metrics"]["balanced_accuracy"]),
                       ("f1", "Macro F1", r["metrics"]["macro_f1"])]
            if "quadratic_kappa" in r["metrics"]:
                metrics.append(("cohen_kappa", "Quadratic weighted kappa", r["metrics"]["quadratic_kappa"]))
        lines += ["  - task:", f"      type: {task_type}", f"      name: {_yaml_str(task_name)}",
                  "    dataset:", f"      name: {_yaml_str(r['dataset']['name'])}",
                  f"      type: {_yaml_str(r['dataset']['type'])}"]
        if r["dataset"].get("split"):
            lines.append(f"      split: {_yaml_str(r['dataset']['split'])}")
        lines.append("    metrics:")
        for mtype, mname, value in metrics:
            scale = 1 if mtype == "cohen_kappa" else 100      # kappa as is ([-1, 1]); rates in percent
            v = "null" if value is None or math.isnan(value) else f"{scale * value:.{4 if scale == 1 else 2}f}"
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
    common = [t for t in a["tasks"] if t in b["tasks"]
              and a["tasks"][t].get("kind", "zero-shot") in ("zero-shot", "retrieval")]
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
    lines = [f"# `{b['model']}` vs `{a['model']}`", "",
             f"**A** = `{a['model']}`, **B** = `{b['model']}`.", "",
             ("Δ = B − A in percentage points (kappa: in kappa units). Balanced accuracy is shown beside the primary "
              "metric: a constant predictor scores 1/K on it, whatever the class shares. `protocol` is how the "
              "model was evaluated, `split` the images scored (A's; B's when they differ)."), "",
             "| task | domain | protocol | split | metric | A: primary | B: primary | Δ primary | A: bal. acc. | "
             "B: bal. acc. | Δ bal. acc. |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]

    def delta(key: str, x, y) -> str:
        if x is None or y is None or (isinstance(x, float) and math.isnan(x)) or (isinstance(y, float) and math.isnan(y)):
            return "-"
        return f"{y - x:+.3f}" if key.startswith("quadratic_kappa") else f"{100 * (y - x):+.2f}"

    for t in common:
        ta, tb = a["tasks"][t], b["tasks"][t]
        key = ta["primary_metric"]
        ba, bb = ta.get("metrics", {}).get("balanced_accuracy"), tb.get("metrics", {}).get("balanced_accuracy")
        sa, sb = (ta.get("dataset") or {}).get("split", "?"), (tb.get("dataset") or {}).get("split", "?")
        split = sa if sa == sb else f"A: {sa}; B: {sb}"
        lines.append(f"| {t} | {ta['domain']} | {ta.get('kind', 'zero-shot')} | {split} | {METRIC_LABELS.get(key, key)} | "
                     f"{fmt_metric(key, ta['primary'])} | "
                     f"{fmt_metric(key, tb['primary'])} | {delta(key, ta['primary'], tb['primary'])} | "
                     f"{pct(ba)} | {pct(bb)} | {delta('balanced_accuracy', ba, bb)} |")
    lines += ["", "Domain means of the primary metric (zero-shot and retrieval tasks):", "",
              "| domain | tasks | A: mean | B: mean | Δ |", "|---|---:|---:|---:|---:|"]
    for d in sorted({a["tasks"][t]["domain"] for t in common
                     if a["tasks"][t].get("kind", "zero-shot") in ("zero-shot", "retrieval")}):
        ts = [t for t in common if a["tasks"][t]["domain"] == d
              and a["tasks"][t].get("kind", "zero-shot") in ("zero-shot", "retrieval")]
        ma = sum(a["tasks"][t]["primary"] for t in ts) / len(ts)
        mb = sum(b["tasks"][t]["primary"] for t in ts) / len(ts)
        lines.append(f"| {d} | {len(ts)} | {pct(ma)} | {pct(mb)} | {100 * (mb - ma):+.2f} |")
    only_a = [t for t in a["tasks"] if t not in b["tasks"]]
    only_b = [t for t in b["tasks"] if t not in a["tasks"]]
    if only_a or only_b:
        lines += ["", f"Not compared (only in A): {', '.join(only_a) or '-'}; (only in B): {', '.join(only_b) or '-'}."]
    return "\n".join(lines) + "\n"
