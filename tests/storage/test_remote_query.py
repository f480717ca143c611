"""The filter language of remote queries (jetscan.storage.remote.parse_filter / filter_table)
on a hand-made metrics table: values of the wrong type for their column and empty ``in``
lists answer one clear ConfigError (or the rows a Python reader expects), never a pyarrow
error from deep inside, and quoted strings keep their exact text."""

from __future__ import annotations

import pyarrow as pa
import pytest

from jetscan.core.errors import ConfigError
from jetscan.storage import remote


@pytest.fixture
def table():
    return pa.table(
        {
            "run": ["a", "b", "c"],
            "signal": ["top", "top", "gluino"],
            "auc": [0.5, 0.9, 0.7],
            "bottleneck": pa.array([4, 8, None], pa.int64()),
            "contaminated": [True, False, False],
            "adv_lambda": pa.array([None, None, None], pa.null()),
            "tag": ["a  b", "a b", "x"],
        }
    )


def _runs(table, query):
    return remote.filter_table(table, query).column("run").to_pylist()


@pytest.mark.parametrize(
    "query, message",
    [
        ("auc == 'x'", r"column 'auc' holds numbers \(double\), not str 'x': .*auc > 0\.1"),
        ("auc in ['a', 1]", r"column 'auc' holds numbers \(double\), not str 'a': .*auc > 0\.1"),
        ("bottleneck in [4, 'x']", r"column 'bottleneck' holds numbers \(int64\), not str 'x'"),
        ("run > 3", r"column 'run' holds text \(string\), not int 3: quote the value, e.g. run == 'top'"),
        ("run in [1, 2]", r"column 'run' holds text \(string\), not int 1"),
        ("0.1 < signal", r"column 'signal' holds text \(string\), not float 0\.1"),
        ("contaminated == 1", r"column 'contaminated' holds true/false \(bool\), not int 1: .*contaminated == true"),
        ("auc == True", r"column 'auc' holds numbers \(double\), not bool True"),
        ("auc and run == 'a'", r"column 'auc' holds numbers \(double\), not true/false: compare it, e.g. auc > 0\.1"),
    ],
)
def test_values_of_the_wrong_type_name_the_column_its_type_and_the_fix(table, query, message):
    with pytest.raises(ConfigError, match=message):
        remote.filter_table(table, query)


def test_in_an_empty_list_matches_no_row_and_not_in_every_row(table):
    assert _runs(table, "signal in []") == []
    assert _runs(table, "signal not in []") == ["a", "b", "c"]
    assert _runs(table, "bottleneck in ()") == []
    assert _runs(table, "auc > 0.6 and not bottleneck in []") == ["b", "c"]


def test_in_lists_compare_numbers_by_value(table):
    assert _runs(table, "bottleneck in [4.0, 8.5]") == ["a"]  # an int column against floats
    assert _runs(table, "bottleneck in [8, None]") == ["b", "c"]  # None matches the missing value
    assert _runs(table, "auc in [0.5, 1]") == ["a"]
    assert _runs(table, "bottleneck in [99999999999999999999999]") == []  # beyond int64: no match, no crash
    assert _runs(table, "bottleneck < 99999999999999999999999") == ["a", "b"]
    assert _runs(table, "signal in ['top', None]") == ["a", "b"]


def test_a_column_with_no_value_yet_matches_nothing_but_none(table):
    assert _runs(table, "adv_lambda == 0.1") == []
    assert _runs(table, "adv_lambda in [0.1, 'x']") == []
    assert _runs(table, "adv_lambda in [None]") == ["a", "b", "c"]
    assert _runs(table, "adv_lambda is None") == ["a", "b", "c"]


def test_quoted_text_keeps_its_exact_whitespace(table):
    assert _runs(table, "tag == 'a  b'") == ["a"]
    assert _runs(table, "tag == 'a b'") == ["b"]
    assert _runs(table, 'tag in ["a  b", "x"]') == ["a", "c"]
    assert _runs(table, "tag == 'a\\tb'") == []  # an escaped tab is a tab, not a space
    # outside quotes, newlines and tabs are spaces still (a query typed over several lines)
    assert _runs(table, "  tag == 'a  b'\n\tor\n signal == 'gluino'\n") == ["a", "c"]
