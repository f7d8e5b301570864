"""The learning loop: reviewers' verdicts become a labelled dataset (`dataset`), a retrained
model is registered as a shadow (`retrain`), compared with the active one on recent traffic
and an evaluation set (`compare`), and promoted only when it is not worse where it matters
(`promote`); and the false-positive rate people see, by context segment (`segments`).

Reads and writes the record only through review's public interface.
"""
