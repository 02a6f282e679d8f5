"""The record every dataset loader returns, the errors bad input raises (DataError for data,
CheckpointError for a checkpoint folder), and how a script ends on them: one line, no traceback.
It sits below data.py, phantom.py and model.py so that all of them use it without importing each
other.

    VQARecord("slake-test-5", "/data/slake/imgs/xmlab1/source.jpg", "Is the lung healthy?", "No",
              "closed", "slake", category="ABN")

    if __name__ == "__main__":
        run_script(main)    # a DataError or CheckpointError: its message and hint, exit status 1
"""

import os
import sys
from dataclasses import dataclass

from PIL import Image

SPLITS = ("train", "val", "test")


@dataclass
class VQARecord:
    id: str
    image: "str | bytes | Image.Image"  # a path, an embedded file's bytes (hf) or an image (phantom)
    question: str
    answer: str
    answer_type: str  # "open" | "closed"
    dataset: str
    cot: str | None = None  # chain-of-thought rationale, when the dataset has one
    source: str = ""  # where the record came from, for error messages: "slake/test.json record 5"
    window: tuple[float, float] | None = None  # raw range of a 16-bit scan read as 0..255 (--window)
    category: str | None = None  # the question's kind, as the dataset writes it: "POS, PRES" (evaluate.py folds it)


class DataError(ValueError):
    """Bad input data. The message names the file, the record (index or line, and id) and field;
    hint, when an option handles such data, names it ("--skip-bad skips such records ...")."""

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.hint = hint


class CheckpointError(Exception):
    """A checkpoint folder that cannot be used: a file damaged (truncated, unreadable) or missing.
    The message names the file, and what to do (DIR.old, the command that writes a whole folder)."""


def damaged_checkpoint(reporter, file, error):
    """The CheckpointError for a checkpoint file that could not be read (truncated: a full disk, an
    interrupted copy), naming DIR.old when an interrupted save left the previous checkpoint there."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
    old = os.path.dirname(os.path.normpath(file)) + ".old"
    kept = os.path.isfile(os.path.join(old, os.path.basename(file)))
    where = f"; {old} holds the previous checkpoint" if kept else ""
    return CheckpointError(f"{reporter}: {file} is damaged (truncated or unreadable: {reason}){where}")


TRACEBACK_VARIABLE = "MEDVQA_TRACEBACK"   # =1 (not 0/false/no/off): bad input ends with Python's traceback


def run_script(main):
    """Run a script's main(). Bad input (DataError, CheckpointError) ends the run with exit status 1
    and one line on stderr, the message and its hint, instead of a traceback from deep inside the
    loader: that traceback says nothing the message does not. MEDVQA_TRACEBACK=1 re-raises instead."""
    try:
        return main()
    except (DataError, CheckpointError) as error:
        if os.environ.get(TRACEBACK_VARIABLE, "").strip().lower() not in ("", "0", "false", "no", "off"):
            raise
        sys.exit(one_line(error))


def one_line(error):
    """A bad-input error as the line a user reads: its message, then the hint of the option that
    handles it, if any."""
    hint = getattr(error, "hint", None)
    return f"{error}; {hint}" if hint else str(error)
