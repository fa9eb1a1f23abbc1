"""`featvlr report`: one comparison of many runs.

Runs that differ only in their seed form a *variant*, labelled by its method and the
settings a user changed (:mod:`featvlr.report.labels`). The report holds a headline table
(rsum, the R@1s, one NDCG per uni-modal and mixed scenario, the composed headline, the
training time and a paired p-value against a baseline), the test queries where the best
variant wins and loses against the baseline (:mod:`featvlr.report.queries`), plots against
an ablation's grid keys (:mod:`featvlr.report.plots`) and every metric in reading order.
Files: ``report.md``, ``report.csv``, ``report.html`` and the PNGs it links.
"""
from featvlr.report.labels import Variant, group_variants
from featvlr.report.runs import RunRecord, load_run, select_runs
from featvlr.report.stats import paired_randomization_test, rsum_contributions
from featvlr.report.write import write_report

__all__ = ["RunRecord", "Variant", "group_variants", "load_run", "paired_randomization_test",
           "rsum_contributions", "select_runs", "write_report"]
