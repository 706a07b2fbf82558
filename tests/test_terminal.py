"""The terminal's verdict summary: one line per item within 120 columns, units as the entries say,
skipped items collapsed, a count line that keeps every verdict apart."""
from __future__ import annotations



from massact.report.terminal import bound_text, limit, measured, number, summary_lines
from report_doc import results_doc


def test_one_line_per_item_that_ran_none_over_120():
    doc = results_doc()
    lines = summary_lines(doc)
    ran = [e for e in doc["results"] if e["verdict"] != "skipped"]
    assert len(lines) == len(ran) + 1 + 1  # the items, one collapsed skip line, the counts
    assert max(len(line) for line in lines) <= 120
    for e, line in zip(ran, lines):
        assert line.startswith(e["claim"]) and e["verdict"] in line
    verdict_column = {line.index(e["verdict"]) for e, line in zip(ran, lines)}
    assert len(verdict_column) == 1  # aligned


def test_values_and_thresholds_in_the_entry_unit():
    lines = summary_lines(results_doc())
    (ablate,) = [line for line in lines if line.startswith("ablate.attention_all/general")]
    assert ablate.split("smollm2-135m")[1].split() == ["refuted", "28.8%", "[25.9%,", "32.2%]", "vs", "within", "±2%"]
    (massive,) = [line for line in lines if line.startswith("massive.exists/general") and "minilm" in line]
    assert "49.0x [41.0x, 57.5x] vs ≥ 1000x" in massive
    (changed,) = [line for line in lines if line.startswith("mlp.down_proj_amplifies")]
    assert changed.endswith("8.00x [7.60x, 8.50x] vs ≥ 10x  (expected holds)")  # a verdict that changed


def test_skipped_collapse_and_counts_keep_verdicts_apart():
    lines = summary_lines(results_doc())
    assert "4 documented-value forms skipped: model is not gpt2 (on minilm-l6, smollm2-135m)" in lines
    assert lines[-1] == ("3 holds, 6 refuted, 1 inconclusive, 1 non-specific, 1 invalid, 4 skipped, 1 error, "
                         "1 bad-record")


def test_verbose_adds_summary_reason_and_controls_within_the_width():
    quiet, loud = summary_lines(results_doc()), summary_lines(results_doc(), verbose=1)
    assert len(loud) > len(quiet) and max(len(line) for line in loud) <= 120
    assert "    controls: random_heads also holds" in loud
    assert "    why: the top-1 grows by 26-32 % when attention is zeroed" in loud
    narrow = summary_lines(results_doc(), verbose=1, width=80)
    assert max(len(line) for line in narrow) <= 80


def test_numbers():
    assert [number(v) for v in (0, 0.2882, 8.0, 13664.2, 412691.2, 4.2e6, 4e-5, float("nan"))] == \
        ["0", "0.288", "8.00", "13664", "412691", "4.2e+06", "4e-05", "nan"]
    assert number(0.2882, "%") == "28.8%" and number(-0.99041, "%") == "-99.0%" and number(49, "x") == "49.0x"
    assert limit(0.02, "%") == "2%" and limit(1000.0, "x") == "1000x" and limit(0.99) == "0.99"
    e = {"primary": "p", "values": {"p": 0.5}, "intervals": {"p": [0.4, 0.6]}, "unit": "",
         "bound": {"op": ">", "value": 1.0, "abs": True}, "threshold": "words"}
    assert measured(e) == "0.5 [0.4, 0.6]" and bound_text(e) == "beyond ±1"
    assert bound_text({"threshold": "words"}) == "words" and measured({"primary": None}) == ""
    # judged by its magnitude: the magnitude's interval, not the signed one spanning 0
    e = {"primary": "p", "values": {"p": -0.564}, "intervals": {"p": [-0.672, 0.69], "|p|": [0.44, 0.667]},
         "unit": "%", "bound": {"op": "<", "value": 0.02, "abs": True}}
    assert measured(e) == "-56.4% (magnitude [44.0%, 66.7%])" and bound_text(e) == "within ±2%"
