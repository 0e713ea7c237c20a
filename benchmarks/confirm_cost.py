"""What confirming a search's finalists cost, in epochs, against averaging R repeats inside every
trial of the search (Ray Tune's `Repeater`, KerasTuner's `executions_per_trial`).

Reads a search that `sweep confirm` (or a `confirm:` section) has confirmed, and counts the epochs
each study trained: a complete trial `training.epochs`, a pruned or failed one the epochs it
reported. The Repeater way trains every trial of the same search R times (the confirmation's
repeats), so it costs R times the search's epochs, at the same pruning decisions (a lower bound:
a repeated trial is pruned on the mean of its repeats, which is less noisy and prunes later).
Epochs are counted, not timed, so other load on the machine does not move the figures.

    python benchmarks/confirm_cost.py STUDY [--storage URL] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def epochs_trained(study: object, epochs: int) -> tuple[int, dict[str, int]]:
    """Epochs a study trained, and its trials by state."""
    from collections import Counter

    total = 0
    states: Counter[str] = Counter()
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] += 1
        if t.state.name == "COMPLETE":
            total += epochs
        elif t.intermediate_values:  # pruned or failed part-way: the epochs it reported
            total += max(t.intermediate_values) + 1
    return total, dict(states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a search that has been confirmed (sweep confirm)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL [default: as sweep resolves it]")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    import sweep
    from sweep.record import CONFIRMED_BY, load_study, stored_config

    search = load_study(args.study, args.storage)
    name = search.user_attrs.get(CONFIRMED_BY)
    if name is None:
        sys.exit(f"study {args.study!r} has no confirmation: run `sweep confirm {args.study}` first")
    confirmation = load_study(name, args.storage)
    scfg, ccfg = stored_config(search), stored_config(confirmation)
    search_epochs, search_states = epochs_trained(search, scfg.training.epochs)
    confirm_epochs, confirm_states = epochs_trained(confirmation, ccfg.training.epochs)
    r = ccfg.search.repeats
    repeater = r * search_epochs
    best = sweep.best_config(args.study, storage=args.storage)
    figures = {
        "study": args.study, "confirmation": name, "repeats": r, "finalists": len(ccfg.search.configs or []),
        "search_trials": search_states, "search_epochs": search_epochs,
        "confirmation_trials": confirm_states, "confirmation_epochs": confirm_epochs,
        "search_plus_confirmation_epochs": search_epochs + confirm_epochs,
        "repeater_epochs": repeater, "share_of_repeater": (search_epochs + confirm_epochs) / repeater,
        "winner": best.get("configuration"), "verdict": best.get("verdict"), "optimism": best.get("optimism"),
        "search_winner": min(((t.value, t.number, t.params) for t in search.get_trials(deepcopy=False)
                              if t.state.name == "COMPLETE"),
                             key=lambda v: (-v[0] if scfg.search.direction == "maximize" else v[0], v[1]))[2],
    }
    print(f"search {args.study}: {sum(search_states.values())} trials {search_states}, {search_epochs} epochs")
    print(f"confirmation {name}: {figures['finalists']} finalists x {r} seeds, {confirm_epochs} epochs")
    print(f"search + confirmation: {search_epochs + confirm_epochs} epochs; the Repeater way ({r} repeats in "
          f"every trial of the same search): {repeater} epochs; share {figures['share_of_repeater']:.2f}")
    print(f"search's winner {figures['search_winner']}; confirmed winner {figures['winner']}: {figures['verdict']}; "
          f"optimism {figures['optimism']:+.4f}" if figures["optimism"] is not None else "")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
