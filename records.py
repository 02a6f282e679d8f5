"""The record every dataset loader returns, and the error bad input raises. It sits below data.py
and phantom.py so that both build records without importing each other.

    VQARecord("slake-test-5", "/data/slake/imgs/xmlab1/source.jpg", "Is the lung healthy?", "No",
              "closed", "slake", category="ABN")
"""

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
    """Bad input data. The message names the file, the record (index or line, and id) and field."""
