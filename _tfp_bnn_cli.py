"""The `tfp-bnn` console script: `tfp_bnn.cli.main`, imported without TensorFlow's start-up log.

Importing TensorFlow prints absl INFO lines to stderr (oneDNN, CUDA drivers, CPU features) before
TF_CPP_MIN_LOG_LEVEL takes effect, so a bad command would print a screen of them before its one
line of error. This module lives outside the `tfp_bnn` package because importing anything inside
it imports TensorFlow first: it points file descriptor 2 at a temporary file while `tfp_bnn.cli`
is imported, then writes back every captured line except those INFO lines (warnings, errors and
Python output of the import are kept).
"""
import os
import re
import sys
import tempfile

__all__ = ["main"]

# absl INFO records ("I0000 00:00:... file.cc:153] ..."), the notice printed before absl logging
# is initialised, and the continuation line of the CPU-feature INFO record.
_STARTUP_INFO = re.compile(r"^(I\d{4} \S+ +\d+ \S+:\d+\] |WARNING: All log messages before "
                           r"absl::InitializeLog\(\) is called are written to STDERR$|To enable "
                           r"the following instructions: .* rebuild TensorFlow)")


def _import_cli():
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr: nothing to filter
        fd = None
    if fd is None:
        import tfp_bnn.cli
        return tfp_bnn.cli
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), fd)
        try:
            import tfp_bnn.cli
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if not _STARTUP_INFO.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
    return tfp_bnn.cli


def main(argv=None):
    return _import_cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
