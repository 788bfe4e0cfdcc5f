#!/usr/bin/perl
# Plack::Test::Suite (Plack's server conformance tests) against Plack::Handler::Pymaster, with
# Plack::Middleware::Lint around every test app, as Plack runs it for its own handlers.
#
#   prove -I pymaster/workers/psgi/perl tests/interop/plack_suite.t        # the handler on HTTP
#
# (run by tests/interop/test_plack_suite.py, which sets the PYMASTER_OPT_* / PYMASTER_RECYCLE_*
# variables a master would hand over).
#
# With PYMASTER_SUITE_SERVER_PORT=P PYMASTER_SUITE_HTTP_PORT=N the handler speaks the uwsgi
# protocol on P and the client goes to N, where a front-end (nginx with uwsgi_pass to P,
# started by tests/interop/test_plack_suite.py) must be listening.
use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Plack::Test::Suite;
use Plack::Middleware::Lint;
use Plack::Handler::Pymaster;

$ENV{PYMASTER_OPT_DISABLE_LOGGING} = 1 unless $ENV{TEST_VERBOSE};
delete @ENV{qw(PYMASTER_MASTER_PID PYMASTER_SCOREBOARD_FD PYMASTER_LISTEN_FDS)};
my $server_port = $ENV{PYMASTER_SUITE_SERVER_PORT};
my $http_port = $ENV{PYMASTER_SUITE_HTTP_PORT};
my $proto = $http_port ? 'uwsgi' : 'http';

Plack::Test::Suite->run_server_tests(sub {
    my ($port, $app) = @_;
    my $sock = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 64, ReuseAddr => 1,
    ) or die "listen on $port: $!";
    local $ENV{PYMASTER_LISTEN_FDS} = fileno($sock) . ":$proto";
    Plack::Handler::Pymaster->new->run(Plack::Middleware::Lint->wrap($app));
}, $server_port, $http_port);
done_testing;
