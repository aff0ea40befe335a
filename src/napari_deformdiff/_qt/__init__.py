"""Qt widgets: they collect parameters, start workers and put results into layers. No compute here."""
