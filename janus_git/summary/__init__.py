"""The daily summary: its figures (figures.py), the text people read (text.py), its chart
(chart.py), and which days are due and the making of one (report.py)."""
