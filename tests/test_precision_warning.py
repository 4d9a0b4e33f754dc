"""The precision warning (rows spread beyond what float64 Gram-form distances resolve)
reaches Python's warnings as pyhypersphere.PrecisionWarning, attributed to the caller."""

import warnings

import pytest
import torch

import pyhypersphere
from pyhypersphere import PrecisionWarning, UniformityLoss, metrics, uniform_loss

MESSAGE = "normalize or rescale the features"


def spread_rows():
    return torch.tensor([[0.0, 0, 0, 0], [1e19] * 4, [1.0, 0, 0, 0]], dtype=torch.float64)


def this_line():
    import inspect

    return inspect.currentframe().f_back.f_lineno


def test_is_an_exported_user_warning():
    assert issubclass(PrecisionWarning, UserWarning)
    assert "PrecisionWarning" in pyhypersphere.__all__


def test_no_warning_for_ordinary_rows():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uniform_loss(torch.nn.functional.normalize(torch.randn(50, 4), dim=1))


def test_error_filter_turns_it_into_an_exception():
    # What `python -W error` does.
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        with pytest.raises(PrecisionWarning, match=MESSAGE):
            uniform_loss(spread_rows())


def test_ignore_filter_silences_it_and_nothing_reaches_stderr(capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrecisionWarning)
        uniform_loss(spread_rows())
    assert MESSAGE not in capfd.readouterr().err


def test_once_per_call_site_attributed_to_the_caller():
    x = spread_rows().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default action for UserWarning
        for _ in range(3):
            uniform_loss(x).backward()  # the backward does not warn again
            line_a = this_line() - 1
        uniform_loss(x)
        line_b = this_line() - 1
    ours = [w for w in caught if issubclass(w.category, PrecisionWarning)]
    assert [(w.filename, w.lineno) for w in ours] == [(__file__, line_a), (__file__, line_b)]
    assert MESSAGE in str(ours[0].message)


def test_through_a_queue_the_metric_and_the_module():
    x = spread_rows()
    for call in (
        lambda: uniform_loss(x[:1], queue=x[1:]),
        lambda: metrics.uniformity(x),
        lambda: UniformityLoss()(x),
    ):
        with pytest.warns(PrecisionWarning, match=MESSAGE):
            call()


def test_the_op_called_directly_still_warns_through_c10(capfd):
    # C++/LibTorch callers and direct op calls keep the c10 warning.
    torch.ops.pyhypersphere.uniform_lse(spread_rows(), None, 2.0, True, 0, 1, False, False)
    assert MESSAGE in capfd.readouterr().err
