"""``jaxdl data-report``: class counts, exact and near duplicates within and across splits
(leaks), unreadable records, and likely label errors (confident learning on out-of-fold
predictions), read through the experiment's own data loader and written as
``data_report.json`` plus PNG plots.

    jaxdl data-report --config experiments/digits_resnet.py --out runs/digits_data
    jaxdl cv --config experiments/digits_resnet.py --folds 5 --workdir runs/digits_cv
    jaxdl data-report --config experiments/digits_resnet.py --out runs/digits_data \\
        --oof runs/digits_cv

See ``docs/data_report.md`` for the report's fields.
"""

from jaxdl.data_report.report import (
    REPORT_FILENAME,
    ReportOptions,
    analyse,
    format_summary,
    write_data_report,
)

__all__ = ["REPORT_FILENAME", "ReportOptions", "analyse", "format_summary", "write_data_report"]
