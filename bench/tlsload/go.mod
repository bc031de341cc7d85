module mailgate.bench/tlsload

go 1.22
