#!/usr/bin/perl
# Plack::Test::Suite (Plack's server conformance tests) against Plack::Handler::Pymaster on an
# HTTP listener, with Plack::Middleware::Lint around every test app, as Plack runs it for its
# own handlers. Run: prove -I pymaster/apps/perl tests/interop/plack_suite.t
use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Plack::Test::Suite;
use Plack::Middleware::Lint;
use Plack::Handler::Pymaster;

$ENV{PYMASTER_DISABLE_LOGGING} = 1 unless $ENV{TEST_VERBOSE};
delete @ENV{qw(PYMASTER_MASTER_PID PYMASTER_SCOREBOARD_FD)};

Plack::Test::Suite->run_server_tests(sub {
    my ($port, $app) = @_;
    my $sock = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 64, ReuseAddr => 1,
    ) or die "listen on $port: $!";
    local $ENV{PYMASTER_LISTEN_FDS} = fileno($sock) . ':http';
    Plack::Handler::Pymaster->new->run(Plack::Middleware::Lint->wrap($app));
});
done_testing;
