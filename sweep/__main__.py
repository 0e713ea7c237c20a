from sweep.lifecycle import hold_at_gate

hold_at_gate()  # a pool's worker started while the study is set up: before the imports below
try:
    from sweep.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing: one line, not a traceback
    import sys

    sys.stderr.write("interrupted while starting; nothing was run\n")
    sys.exit(130)

try:
    main()
except SystemExit as end:
    from sweep.lifecycle import leave
    from sweep.storage import close_all

    leave(end.code, close_all)  # a command that trained: without the interpreter's teardown
    raise
