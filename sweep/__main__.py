from sweep.lifecycle import hold_at_gate

hold_at_gate()  # a pool's worker started while the study is set up: before the imports below
try:
    from sweep.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing: one line, not a traceback
    import sys

    sys.stderr.write("interrupted while starting; nothing was run\n")
    sys.exit(130)

main()
