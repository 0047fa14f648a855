module mailroom/benches/go_peer

go 1.19
