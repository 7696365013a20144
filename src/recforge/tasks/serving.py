"""A task's serving assets: what a bundle keeps beside the model to turn raw requests into model
inputs and model outputs into answers. The server, `recforge predict` and the exporter use a
bundle's assets only through this class (each kind of task has its own: `Task.assets`).

A request becomes a `Request` on the event loop (validated there, so a bad one is answered with
the field it names: `RequestError`); the model's thread merges the waiting requests' payloads into
one batch of model inputs (`model_inputs_of`), and the probabilities of each request's rows go
back to it (to `Request.answer`, for recommendations).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa


class RequestError(Exception):
    """A request the client must fix: HTTP `status`, the `field` at fault and what is wrong."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


@dataclass
class Request:
    """One request's part of a batch: the model rows it scores, what the assets turn into model
    inputs (`payload`), and how the probabilities of its rows become its answer."""

    rows: int
    payload: Any
    answer: Callable[[np.ndarray], dict] = lambda probabilities: {"probabilities": probabilities.tolist()}


# A bundle's exports are checked against the eager model on this many rows of model inputs.
EXPORT_SAMPLE_ROWS = 10_000


@dataclass
class Exported:
    """What a task's export gives the bundle: the data fingerprint of the assets it wrote, the
    model-input rows the exports are checked on, and a description of them."""

    fingerprint: dict
    data: str  # where the data came from, for a refusal
    sample: dict[str, np.ndarray]
    sample_of: str


class ServingAssets(abc.ABC):
    """A bundle's assets, read from its folder."""

    inputs: list[dict]  # the request schema (the manifest's `inputs`)

    @abc.abstractmethod
    def __init__(self, folder: Path): ...

    @property
    @abc.abstractmethod
    def model_inputs(self) -> list[str]:
        """The model's input tensors, in order."""

    @property
    @abc.abstractmethod
    def what_it_does(self) -> str:
        """What this kind of bundle answers, for a request it cannot."""

    def score_request(self, payload: dict) -> Request:
        """POST /v1/score's body -> the rows it scores."""
        raise RequestError("body", f"/v1/score scores raw rows; {self.what_it_does}", 404)

    @abc.abstractmethod
    def recommend_request(self, payload: dict, k: int) -> Request:
        """POST /v1/recommend's body -> the rows it scores and how they become its answer."""

    @abc.abstractmethod
    def model_inputs_of(self, payloads: list) -> dict[str, np.ndarray]:
        """The model inputs of several requests' payloads, their rows in order."""


class RowScoringAssets(ServingAssets):
    """Assets of a model that scores raw rows, one probability each (/v1/score, `recforge predict`)."""

    @abc.abstractmethod
    def table(self, payload: dict) -> pa.Table:
        """A request's `rows` (objects named by column) or `columns` (name -> values) as an Arrow
        table of the raw inputs; a missing column or a value of the wrong type is a RequestError
        naming it."""

    @abc.abstractmethod
    def encode(self, table: pa.Table) -> dict[str, np.ndarray]:
        """A checked table's model inputs."""

    def score_request(self, payload: dict) -> Request:
        table = self.table(payload)
        return Request(rows=table.num_rows, payload=table)

    def model_inputs_of(self, payloads: list) -> dict[str, np.ndarray]:
        return self.encode(pa.concat_tables(payloads))
