module mailgate.bench/tlssink

go 1.22
