"""``quallm review``: the local web app where a person reviews machine codings.

``session`` (a run under review), ``app`` (Starlette) and ``server`` (uvicorn) are imported only by
``quallm review``. The decision log and the queue are in the run layer (``quallm.run.review_log``,
``quallm.run.review_state``); what decisions mean downstream is analysis (``quallm.analysis.reviewed``).
"""
