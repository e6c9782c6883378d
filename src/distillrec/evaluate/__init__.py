"""Test-split evaluation of every row of the comparison table (popularity, students, ...)."""
