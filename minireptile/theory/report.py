"""Tables (markdown) and figures (matplotlib) of the three section-5 experiments' reports."""
import numpy as np

ALGOS = ("maml", "fomaml", "reptile")
NAMES = {"maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile"}


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def holds(row, rel=0.1, z=2.0):
    """Whether the measured c1 and c2 agree with Eqs. (33)-(41): each within 10% of the
    prediction or within 2 standard errors of it."""
    return all(abs(row[c] - row[c + "_pred"]) <= max(rel * abs(row[c + "_pred"]),
                                                     z * row[c + "_se"]) for c in ("c1", "c2"))


def _ranges(ks):
    """[2, 3, 4, 7] -> '2-4, 7'; [] -> 'none'."""
    parts, start = [], None
    for i, k in enumerate(ks):
        start = k if start is None else start
        if i + 1 == len(ks) or ks[i + 1] != k + 1:
            parts.append(f"{start}" if start == k else f"{start}-{k}")
            start = None
    return ", ".join(parts) or "none"


def agreement_table(report):
    """For every alpha and algorithm, the k where ``holds``."""
    rows = []
    for alpha in report["alphas"]:
        rows.append([f"{alpha:g}"] + [_ranges([r["k"] for r in report["rows"] if r["algo"] ==
                                               algo and r["alpha"] == alpha and holds(r)])
                                      for algo in ALGOS])
    return _table(["alpha"] + [NAMES[a] for a in ALGOS], rows)


def coefficient_tables(report):
    """Four tables for one theta: where the prediction holds, c2/alpha, c1, the residuals."""
    rows, ks = report["rows"], report["ks"]
    cell = {(r["algo"], r["k"], r["alpha"]): r for r in rows}
    head = ["algorithm", "alpha"] + [f"k={k}" for k in ks]
    c2, c1, res = [], [], []
    for algo in ALGOS:
        one = [cell[algo, k, report["alphas"][0]] for k in ks]
        c2.append([NAMES[algo], "Eqs. 33-41"] + [f"{r['c2_pred'] / r['alpha']:g}" for r in one])
        c1.append([NAMES[algo], "Eqs. 33-41"] + [f"{r['c1_pred']:g}" for r in one])
        for alpha in report["alphas"]:
            one = [cell[algo, k, alpha] for k in ks]
            c2.append(["", f"{alpha:g}"] + [f"{r['c2'] / alpha:.2f} ± {r['c2_se'] / alpha:.2f}"
                                            for r in one])
            c1.append(["", f"{alpha:g}"] + [f"{r['c1']:.3f} ± {r['c1_se']:.3f}" for r in one])
            res.append([NAMES[algo], f"{alpha:g}"] + [
                f"{r['residual']:.4f} ({r['noise']:.4f}; {r['residual_pred']:.3f})"
                for r in one])
    sizes = (f"|AvgGrad| = {report['avg_grad']['norm']:.4g} ± {report['avg_grad']['se']:.2g}, "
             f"|AvgGradInner| = {report['avg_grad_inner']['norm']:.4g} ± "
             f"{report['avg_grad_inner']['se']:.2g}; {report['tasks']} tasks in "
             f"{report['groups']} groups")
    return "\n\n".join([
        sizes, "k where c1 and c2 agree with Eqs. 33-41 (within 10% or 2 standard errors):",
        agreement_table(report),
        "c2 / alpha, the AvgGradInner coefficient (measured ± standard error):",
        _table(head, c2), "c1, the AvgGrad coefficient:", _table(head, c1),
        "relative residual of the fit (noise floor; residual of the predicted c1, c2):",
        _table(head, res)])


def spectrum_table(report):
    """One row per theta and operator: mean over tasks of the m extreme values."""
    head = ["theta", "operator", "smallest", "largest", "alpha * lambda_max", "loss / change"]
    rows, alpha = [], report["alpha"]
    for name, tasks in report["points"].items():
        for key, label in (("theta", "H(theta)"), ("phi_k", f"H(phi_{report['k']})"),
                           ("jacobian", f"J singular values, k={report['k']}")):
            bottom = np.mean([t[key]["bottom"] for t in tasks], axis=0)
            top = np.mean([t[key]["top"] for t in tasks], axis=0)
            last = (np.mean([t[key]["change"] for t in tasks]) if key == "jacobian"
                    else np.mean([t[key]["loss"] for t in tasks]))
            rows.append([name, label, ", ".join(f"{v:.4g}" for v in bottom),
                         ", ".join(f"{v:.4g}" for v in top),
                         "" if key == "jacobian" else f"{alpha * top[0]:.3g}", f"{last:.4g}"])
    return (f"mean over {len(tasks)} task(s); alpha = {alpha}; last column: the task loss, "
            f"or ||g_MAML - g_FOMAML|| / ||g_FOMAML||\n\n" + _table(head, rows))


def manifold_table(report):
    head = ["iteration", "E[D^2/2]", "E[D]", "E[L(theta)]", "E[L(U^k theta)]",
            "E[L(phi*)]"]
    out = []
    for label, records in report["runs"].items():
        k = report["settings"]["runs"][label]
        rows = [[i, f"{r['half_sq_distance']:.3f}", f"{r['distance']:.3f}",
                 f"{r['loss']:.4f}", f"{r['loss_adapted']:.4f}", f"{r['loss_solution']:.4f}"]
                for i, r in zip(report["iterations"], records)]
        out.append(f"{label} (k = {k}):\n\n" + _table(head, rows))
    return "\n\n".join(out)


def render(experiment, report):
    """The printed tables of one experiment's report."""
    if experiment == "coefficients":
        return "\n\n".join(f"## theta: {name}\n\n" + coefficient_tables(r)
                           for name, r in report.items())
    return spectrum_table(report) if experiment == "spectrum" else manifold_table(report)


def plot(experiment, report, path):
    """Write the experiment's figure to path (a file name or a binary file object; PNG)."""
    import matplotlib.pyplot as plt
    fig = {"coefficients": _plot_coefficients, "spectrum": _plot_spectrum,
           "manifold": _plot_manifold}[experiment](plt, report)
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _plot_coefficients(plt, report):
    fig, axes = plt.subplots(len(report), 3, figsize=(12, 3.6 * len(report)), squeeze=False)
    for row, (name, r) in zip(axes, report.items()):
        cell = {(x["algo"], x["k"], x["alpha"]): x for x in r["rows"]}
        ks = np.array(r["ks"])
        for ax, algo in zip(row, ALGOS):
            pred = [-cell[algo, k, r["alphas"][0]]["c2_pred"] / r["alphas"][0] for k in ks]
            ax.plot(ks, pred, "k--", label="Eqs. 33-41")
            for alpha in r["alphas"]:
                one = [cell[algo, k, alpha] for k in ks]
                ax.errorbar(ks, [-x["c2"] / alpha for x in one],
                            [2 * x["c2_se"] / alpha for x in one], marker="o", ms=3,
                            capsize=2, label=f"alpha = {alpha:g}")
            ax.set_title(f"{NAMES[algo]}, theta {name}")
            ax.set_xlabel("k")
            ax.set_ylabel("-c2 / alpha  (± 2 s.e.)")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plot_spectrum(plt, report):
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    labels, x = [], 0
    for name, tasks in report["points"].items():
        for key in ("theta", "phi_k"):
            values = np.concatenate([t[key]["bottom"] + t[key]["top"] for t in tasks])
            ax.plot(np.full(values.size, x), values, "o", alpha=0.6)
            labels.append(f"{name}\n{'theta' if key == 'theta' else 'phi_' + str(report['k'])}")
            x += 1
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title("extreme eigenvalues of the task-loss Hessian")
    for x, (name, tasks) in enumerate(report["points"].items()):
        values = np.concatenate([t["jacobian"]["bottom"] + t["jacobian"]["top"] for t in tasks])
        bx.plot(np.full(values.size, x), values, "o", alpha=0.6)
    bx.axhline(1, color="k", lw=0.5)
    bx.set_xticks(range(len(report["points"])), list(report["points"]))
    bx.set_title(f"singular values of (I - alpha H_1)...(I - alpha H_k), k = {report['k']}, "
                 f"alpha = {report['alpha']:g}", fontsize=9)
    fig.tight_layout()
    return fig


def _plot_manifold(plt, report):
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    its = np.maximum(report["iterations"], 0.5)
    for label, records in report["runs"].items():
        k = report["settings"]["runs"][label]
        ax.plot(its, [r["half_sq_distance"] for r in records], "o-", label=f"{label}, k = {k}")
        line = bx.plot(its, [r["loss"] for r in records], "o-", label=f"E[L(theta)], {label}")
        bx.plot(its, [r["loss_adapted"] for r in records], "s:", color=line[0].get_color(),
                label=f"E[L(U^k theta)], {label}")
    for a, title in ((ax, "E[D(theta, W_tau)^2 / 2], Eq. (42)"), (bx, "expected task loss")):
        a.set_xscale("symlog", linthresh=1)
        a.set_xlabel("meta-iteration")
        a.set_title(title)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    return fig
