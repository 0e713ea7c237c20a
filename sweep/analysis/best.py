"""`sweep best` as text: the best configuration with its verdict against the others, or the best
trial with the note that one seed decided (sweep/ranking.py decides; this only renders
`sweep.best_config`'s dict)."""

from __future__ import annotations

from typing import Any



def _n(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _interval(ci: list[float] | None, signed: bool = False, digits: int = 4) -> str:
    if ci is None:
        return "[n/a]"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _p(v: float | None) -> str:
    return "n/a" if v is None else ("<0.001" if v < 0.001 else f"{v:.3f}")


def versus_line(v: dict[str, Any], correction: str) -> str:
    """One other configuration against the best: Δ (best − other), the test, p adjusted, P(better)."""
    from sweep.stats import CORRECTION_NAMES, PAIRED, WELCH

    test = {PAIRED: "paired t-test", WELCH: "Welch's t-test"}.get(v["test"] or "", "not tested (too few runs)")
    prob = "n/a" if v["prob_improvement"] is None else f"{v['prob_improvement']:.2f}"
    return (f"{v['config']} {_n(v['mean'])} (n={v['n']}): Δ {_n(v['diff'], True)} {_interval(v['diff_ci'], True)}, "
            f"{test}, p adj ({CORRECTION_NAMES[correction]}) {_p(v['p_adjusted'])}, "
            f"P(better) {prob} {_interval(v['prob_ci'], digits=2)}")


def format_best(cfg: dict[str, Any]) -> str:
    """`best_config`'s dict as aligned `name  value` rows."""
    metric = cfg["metric"]
    if cfg.get("judged_by") in ("configuration", "confirmation"):
        j = cfg["judgement"]
        of = f" of study {cfg['confirmation']}" if cfg["judged_by"] == "confirmation" else ""
        pct = f"{j['confidence']:.0%}"
        seeds = ", ".join(str(s) for s in cfg["seeds"])
        rows: list[tuple[str, Any]] = [
            ("study", cfg["study"]),
            ("best configuration", f"{cfg['configuration']}: {metric} mean {_n(cfg['value'])} ± {_n(cfg['std'])}, "
                                   f"{pct} CI {_interval(cfg['ci'])}, n={cfg['n']} (seeds {seeds})"),
            ("verdict", cfg["verdict"]),
            *((("runner-up" if i == 0 else "vs"), versus_line(v, j["correction"])) for i, v in enumerate(j["versus"])),
            *((k, v) for k, v in cfg["params"].items()),
            ("model", f"trial {cfg['trial']}{of}, seed {cfg['seed']}, {metric} {_n(cfg['representative']['value'])}: "
                      f"{cfg['representative']['rule']}"),
            ("test_accuracy", cfg["test_accuracy"]), ("mlflow_run_id", cfg["mlflow_run_id"]),
            ("model_uri", cfg["mlflow_model_uri"]), ("tracking_uri", cfg["tracking_uri"]),
            ("single best trial", f"trial {cfg['best_trial']['trial']}{of} ({cfg['best_trial']['configuration']}, seed "
                                  f"{cfg['best_trial']['seed']}) {_n(cfg['best_trial']['value'])}: one seed, "
                                  "not the best configuration"),
        ]
        if cfg["judged_by"] == "confirmation":
            at = rows.index(("verdict", cfg["verdict"]))
            rows[1:1] = [("confirmed in", f"study {cfg['confirmation']}: the search's finalists trained again on "
                                          f"fresh seeds ({seeds})")]
            rows[at + 2:at + 2] = [
                ("search said", f"trial {cfg['search_trial']} {_n(cfg['search_value'])}; optimism "
                                f"{_n(cfg['optimism'], True)} (search value − confirmed mean)"),
                *(("finalist", f"{f['config']}: search {_n(f['search_value'])} (trial {f['search_trial']}), "
                               f"confirmed {_n(f['mean'])} over n={f['n']}") for f in cfg["finalists"])]
    else:
        rows = [("study", cfg["study"]), ("trial", cfg["trial"]), (metric, f"{cfg['value']:.4f}"),
                *((k, v) for k, v in cfg["params"].items()), ("seed", cfg["seed"]),
                ("test_accuracy", cfg["test_accuracy"]), ("mlflow_run_id", cfg["mlflow_run_id"]),
                ("model_uri", cfg["mlflow_model_uri"]), ("tracking_uri", cfg["tracking_uri"]),
                ("judged by", cfg.get("note", ""))]
    width = max(len(str(k)) for k, _ in rows)
    return "\n".join(f"{str(k):<{width}}  {v}" for k, v in rows)
