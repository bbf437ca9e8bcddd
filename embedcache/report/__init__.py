"""Tables, statistics, plots and HTML reports built from results."""
