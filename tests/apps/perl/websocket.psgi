# psgix.* under a real WebSocket: tests/integration/test_psgi_psgix.py (pymaster and Starman)
#   /ws          the WebSocket echo (lib/WsEcho.pm) on psgix.io; the app closes the socket
#   /ws?keep=1   the same, but the app keeps the socket after it returns (never closes it)
#   /ws101       the 101 sent through the responder, the frames on psgix.io
#   /cleanup     a cleanup handler appends "cleanup PID N" to $ENV{CLEANUP_LOG}
#   /harakiri    asks psgix.harakiri.commit: the worker exits after the response
#   /pid         this worker's pid
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use WsEcho;

our @KEPT;
my $n = 0;

sub {
    my $env = shift;
    my $path = $env->{PATH_INFO};
    my $text = ['Content-Type' => 'text/plain'];
    if ($path eq '/ws') {
        my $fh = $env->{'psgix.io'} or return [501, $text, ["no psgix.io\n"]];
        return sub {                          # the responder is never called
            WsEcho::serve($env, $fh);
            if (($env->{QUERY_STRING} // '') =~ /keep=1/) { push @KEPT, $fh }
            else { close $fh }
        };
    }
    if ($path eq '/ws101') {
        return sub {
            my $responder = shift;
            local $env->{HTTP_CONNECTION} = $env->{HTTP_CONNECTION} // 'Upgrade';   # Starman
            my $hs = Protocol::WebSocket::Handshake::Server->new_from_psgi($env);
            $hs->parse('');
            my ($head, @h) = split /\r\n/, $hs->to_string;
            $responder->([101, [map { split /: /, $_, 2 } @h]]);
            my $fh = $env->{'psgix.io'};
            my $frame = $hs->build_frame;
            while (sysread $fh, my $buf, 65536) {
                $frame->append($buf);
                while (defined(my $msg = $frame->next_bytes)) {
                    my $type = $frame->is_close ? 'close' : 'text';
                    syswrite $fh, $hs->build_frame(type => $type, buffer => $msg)->to_bytes;
                    if ($type eq 'close') { close $fh; return }
                }
            }
        };
    }
    if ($path eq '/cleanup') {
        my $count = ++$n;
        push @{ $env->{'psgix.cleanup.handlers'} }, sub {
            open my $log, '>>', $ENV{CLEANUP_LOG} or die "CLEANUP_LOG: $!";
            print {$log} "cleanup $$ $count\n";
            close $log;
        } if $env->{'psgix.cleanup'};
        return [200, $text, ["cleanup " . ($env->{'psgix.cleanup'} ? 'yes' : 'no') . "\n"]];
    }
    if ($path eq '/harakiri') {
        $env->{'psgix.harakiri.commit'} = 1 if $env->{'psgix.harakiri'};
        return [200, $text, ["harakiri $$\n"]];
    }
    if ($path eq '/buffered') {
        my $in = $env->{'psgi.input'};
        $in->read(my $first, 1 << 20);
        $in->seek(0, 0);
        $in->read(my $again, 1 << 20);
        return [200, $text, [($env->{'psgix.input.buffered'} ? 'buffered' : 'not buffered')
                             . ' ' . ($first eq $again ? 'same' : 'different') . ' ' . length($again) . "\n"]];
    }
    return [200, $text, ["pid $$\n"]];
};
