"""Plotly views of safety neurons, edits and outcomes; every function returns a `go.Figure`.

Languages are the codes of `safety_neurons.prompts.LANGS`, shown as English names ("Bengali (bn)").
Tensors (torch) and arrays (numpy) are both accepted; bad input raises `ValueError`.

* ranking (`SafetyNeurons`): `neuron_heatmap`, `neuron_counts`, `jaccard_heatmap`
* the edit: `before_after` (safety-neuron profiles and distance to English), `representation_map` (PCA)
* outcome: `asr_bars`, `utility_panel`, `sweep_scatter`
* `write_report`: one self-contained HTML page with a table, the figures and the settings
"""

from ._common import LANG_COLORS, LANG_NAMES, LANGS, lang_label
from .edit import before_after, representation_map
from .neurons import jaccard_heatmap, neuron_counts, neuron_heatmap
from .outcome import asr_bars, sweep_scatter, utility_panel
from .report import markdown_table_html, write_report

__all__ = [
    "LANGS", "LANG_NAMES", "LANG_COLORS", "lang_label",
    "neuron_heatmap", "neuron_counts", "jaccard_heatmap",
    "before_after", "representation_map",
    "asr_bars", "utility_panel", "sweep_scatter",
    "write_report", "markdown_table_html",
]  # fmt: skip
