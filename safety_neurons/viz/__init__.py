"""Plotly views of safety neurons, edits and outcomes; every function returns a `go.Figure`.

Languages are the codes of `safety_neurons.prompts.LANGS`, shown as English names ("Bengali (bn)").
Tensors (torch) and arrays (numpy) are both accepted; bad input raises `ValueError`.

* ranking (`SafetyNeurons`): `layer_language_heatmap`, `shared_neurons_heatmap`, `neuron_heatmap`,
  `neuron_counts`, `jaccard_heatmap`
* the edit: `edit_site_change` (the residual stream after the edited layer, before vs after),
  `before_after` (safety-neuron profiles and distance to English), `representation_map` (PCA)
* outcome: `outcome_bars` (three-way verdicts with intervals), `asr_bars`, `utility_panel`, `sweep_scatter`,
  `frontier` (methods at equal over-refusal)
* `write_report`: one self-contained HTML page with a table, the figures, `answer_examples` and the settings
"""

from ._common import LANG_COLORS, LANG_NAMES, LANGS, lang_label
from .edit import before_after, edit_site_change, representation_map
from .neurons import jaccard_heatmap, layer_language_heatmap, neuron_counts, neuron_heatmap, shared_neurons_heatmap
from .outcome import asr_bars, frontier, outcome_bars, sweep_scatter, utility_panel
from .report import HtmlSection, answer_examples, markdown_table_html, write_report

__all__ = [
    "LANGS",
    "LANG_NAMES",
    "LANG_COLORS",
    "lang_label",
    "layer_language_heatmap",
    "shared_neurons_heatmap",
    "neuron_heatmap",
    "neuron_counts",
    "jaccard_heatmap",
    "edit_site_change",
    "before_after",
    "representation_map",
    "outcome_bars",
    "asr_bars",
    "utility_panel",
    "sweep_scatter",
    "frontier",
    "write_report",
    "answer_examples",
    "HtmlSection",
    "markdown_table_html",
]
