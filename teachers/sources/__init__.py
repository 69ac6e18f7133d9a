"""One module per checkpoint source; `teachers.load.load_teacher` picks one from the spec."""
