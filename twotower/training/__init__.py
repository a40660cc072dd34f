"""The training layer: what ``twotower-train`` does, as named phases over a composed config.

``train`` (select, test, final fit, publish), the settings that follow the log (``sizing``), the run
directory's lock and publication (``staging``), progress and the end-of-run ``summary``, and offline
``evaluation`` of runs and vectors. It imports the model, the index, the data and the run directory; never
serving.
"""
