# PSGI hello world for the benchmarks (fixed Content-Length, so keep-alive is possible).
my $body = "Hello, World!\n";
my $app = sub {
    return [200, ['Content-Type' => 'text/plain', 'Content-Length' => length $body], [$body]];
};
$app;
