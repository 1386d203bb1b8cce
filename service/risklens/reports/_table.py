"""Reading a claims table (CSV or Parquet) into schema-shaped claims, without dropping bad rows.

Real exports are messy: "?" for missing, numbers stored as text, empty trailing columns, extra
identifier columns. The reader keeps only the model's features (plus an optional id and label
column), turns what can be parsed into the schema's types, and leaves anything else as the text
it was, so that ``validate_claim`` rejects exactly that row with a message naming the field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from risklens.errors import InvalidRequest, SchemaError
from risklens.registry import Manifest, file_sha256
from risklens.registry.manifest import FeatureSpec

# Tokens that mean "missing" in claims exports ("?" is common in public insurance data).
NA_TOKENS = ("", "?", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}

log = logging.getLogger(__name__)


@dataclass
class ClaimsTable:
    """The features to explain (object columns of float, str, bool or None; text read from a CSV stays
    pandas' str dtype, NA for missing), row positions, ids, labels."""

    path: Path
    data_sha256: str
    features: pd.DataFrame  # schema feature columns, index = row position in the source table
    claim_ids: list[str]
    labels: np.ndarray | None  # 0/1 per row (float, NaN where unlabelled), or None without a label column
    ignored_columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.features)


def _arrow_numbers(column: pd.Series) -> pd.Series | None:
    """An Arrow text column parsed by Arrow, when every value is a plain number (else None).

    pandas parses Arrow text value by value in Python (fraud_oracle's six numeric columns, 15,420
    rows: 0.11 s); Arrow's cast does it in native code. A column it refuses (any value that is not a
    number) or that spells NaN goes through pandas, which decides what is kept as text.
    """
    if not (isinstance(column.dtype, pd.StringDtype) and column.dtype.storage == "pyarrow"):
        return None
    try:
        parsed = pc.cast(column.array.__arrow_array__(), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    values = parsed.to_numpy()
    if np.isnan(values).sum() != parsed.null_count:  # "nan" in the text: pandas' rules decide
        return None
    out = pd.Series(values, index=column.index, dtype="object")
    if parsed.null_count:
        out[np.isnan(values)] = None
    return out


def _as_number(column: pd.Series) -> pd.Series:
    """Parsed numbers; values that are not numbers stay as their text (the row is rejected later)."""
    parsed = _arrow_numbers(column)
    if parsed is not None:
        return parsed
    missing = column.isna()
    numbers = pd.to_numeric(column, errors="coerce")
    out = pd.Series(numbers.astype("float64").to_numpy(), index=column.index, dtype="object")
    unparsed = numbers.isna() & ~missing
    out[unparsed] = column[unparsed].astype(str)
    out[missing] = None
    return out


def _as_text(column: pd.Series) -> pd.Series:
    if isinstance(column.dtype, pd.StringDtype):  # text already (every CSV column): kept as it is
        # Made Python strings chunk by chunk where the chunks are explained (validate_columns), not all
        # at once here, before any worker can start (61,680 claims: 0.12 s), and sent to workers as
        # Arrow buffers instead of pickled strings.
        return column

    def text(value: object) -> str | None:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return None
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value))  # 2004.0 read from Parquet is the category "2004"
        return str(value)

    return pd.Series([text(v) for v in column], index=column.index, dtype="object")


def _as_boolean(column: pd.Series) -> pd.Series:
    def flag(value: object) -> bool | str | None:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return None
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        word = str(value).strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        return str(value)

    return pd.Series([flag(v) for v in column], index=column.index, dtype="object")


def _normalise(spec: FeatureSpec, column: pd.Series) -> pd.Series:
    if spec.type == "numeric":
        return _as_number(column)
    if spec.type == "boolean":
        return _as_boolean(column)
    return _as_text(column)


def _read_csv_as_text(path: Path, na_values: tuple[str, ...]) -> pd.DataFrame:
    """Every column as text: the schema, not pandas' guess, decides each column's type.

    Arrow's reader is multi-threaded (fraud_oracle four times over, 61,680 rows: 0.12 s instead of
    0.51 s on 2 cores) and gives the same frame; a file it refuses (rows short of the header's
    columns, which pandas fills with missing values) is read again by pandas' own parser, which
    decides what is an error.
    """
    options: dict[str, Any] = {"dtype": str, "keep_default_na": False, "na_values": list(na_values)}
    try:
        return pd.read_csv(path, engine="pyarrow", **options)
    except (ValueError, pa.ArrowException) as error:
        # The error's type only: Arrow's message quotes the offending row, i.e. claim values.
        log.debug("Arrow could not read %s (%s); reading it with pandas' parser", path.name, type(error).__name__)
    # Outside the handler: an error of pandas' parser must not carry Arrow's (and its row) as context.
    return pd.read_csv(path, **options)


def read_claims_table(path: Path, manifest: Manifest, *, id_column: str | None = None,
                      label_column: str | None = None, na_values: tuple[str, ...] = NA_TOKENS) -> ClaimsTable:
    """Read ``path`` (``.csv`` or ``.parquet``) for ``manifest``'s features.

    Raises SchemaError when a feature has no column at all (every row would fail), InvalidRequest
    for an unknown file type or a named id/label column that is not there.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            raw = _read_csv_as_text(path, na_values)
        except UnicodeDecodeError as error:
            raise InvalidRequest(f"claims table {path.name!r} is not UTF-8 text ({error.reason})", field="data") from None
    elif suffix in (".parquet", ".pq"):
        raw = pd.read_parquet(path)
        text_columns = [c for c in raw.columns if not pd.api.types.is_numeric_dtype(raw[c])
                        and not pd.api.types.is_bool_dtype(raw[c])]
        raw[text_columns] = raw[text_columns].replace(list(na_values), None)
    else:
        raise InvalidRequest(f"claims table {path.name!r}: expected a .csv or .parquet file", field="data")
    raw = raw.reset_index(drop=True)
    missing = [name for name in manifest.feature_names if name not in raw.columns]
    if missing:
        raise SchemaError(f"claims table {path.name!r} has no column for feature(s) {missing} of model "
                          f"{manifest.name!r}", field=missing[0])
    for role, column in (("id", id_column), ("label", label_column)):
        if column and column not in raw.columns:
            raise InvalidRequest(f"claims table {path.name!r} has no {role} column {column!r}", field=column)
    features = pd.DataFrame({spec.name: _normalise(spec, raw[spec.name]) for spec in manifest.features},
                            index=raw.index)
    if id_column:
        claim_ids = [str(v) if not pd.isna(v) else str(i) for i, v in zip(raw.index, raw[id_column])]
    else:
        claim_ids = [str(i) for i in raw.index]
    labels = None
    if label_column:
        labels = _labels(raw[label_column])
        given = int(raw[label_column].notna().sum())
        if given and np.isnan(labels).all():
            raise InvalidRequest(f"label column {label_column!r} holds no 0/1 (or yes/no) outcome: none of its {given:,} "
                                 f"values is one; pass the column with the 0/1 outcome", field="label_column")
    used = {*manifest.feature_names, id_column, label_column}
    return ClaimsTable(path=path, data_sha256=file_sha256(path), features=features, claim_ids=claim_ids,
                       labels=labels, ignored_columns=[c for c in raw.columns if c not in used])


def _labels(column: pd.Series) -> np.ndarray:
    """0/1 labels: numbers as given, or yes/no-style text; anything else counts as unlabelled (NaN)."""
    numbers = pd.to_numeric(column, errors="coerce").astype("float64").to_numpy()
    words = column.astype("str").str.strip().str.lower()
    numbers = np.where(np.isnan(numbers) & words.isin(_TRUE).to_numpy(), 1.0, numbers)
    numbers = np.where(np.isnan(numbers) & words.isin(_FALSE).to_numpy(), 0.0, numbers)
    return np.where(np.isin(numbers, (0.0, 1.0)), numbers, np.nan)
