"""The ``gflops-track`` console command: ``run`` (the Hydra app), ``compare``, ``sync``, ``reap`` and ``whatif``."""

from __future__ import annotations

import sys

from gflops_track.common.redact import install_console_masking

USAGE = """usage: gflops-track {run,compare,sync,reap,whatif} ...

  run [hydra overrides]   profile and track, e.g. gflops-track run -m norm_fn=group,batch,instance
  compare [options]       compare runs, write reports, gate on regressions (gflops-track compare --help)
  sync [folders]          upload runs spooled while the tracking server was unreachable (gflops-track sync --help)
  reap [--yes]            end runs left RUNNING by a process that is gone, e.g. SIGKILL (gflops-track reap --help)
  whatif --run ID --hardware NAME   a run's layers bounded on other hardware (gflops-track whatif --help)
"""


def main() -> None:
    install_console_masking()  # belt and braces: no command prints a credential, whoever prints it
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "run":
        from gflops_track.cli.run import main as run_main

        sys.argv = [f"{sys.argv[0]} run", *rest]
        run_main()
    elif command == "compare":
        from gflops_track.cli.compare import main as compare_main

        sys.exit(compare_main(rest))
    elif command == "sync":
        from gflops_track.cli.sync import main as sync_main

        sys.exit(sync_main(rest))
    elif command == "reap":
        from gflops_track.cli.reap import main as reap_main

        sys.exit(reap_main(rest))
    elif command == "whatif":
        from gflops_track.cli.whatif import main as whatif_main

        sys.exit(whatif_main(rest))
    else:
        sys.stderr.write(USAGE)
        sys.exit(0 if command in ("-h", "--help") else 2)


if __name__ == "__main__":
    main()
