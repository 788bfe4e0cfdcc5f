package WsEcho;
# A blocking WebSocket echo over psgix.io (Protocol::WebSocket, Debian
# libprotocol-websocket-perl), shared by the test apps: the handshake, then every text or
# binary message sent back, until the client's close frame, which is answered.
use strict;
use warnings;
use Protocol::WebSocket::Handshake::Server;
use Protocol::WebSocket::Frame;

sub _send {
    my ($fh, $bytes) = @_;
    my $off = 0;
    while ($off < length $bytes) {
        my $w = syswrite $fh, $bytes, length($bytes) - $off, $off;
        return 0 unless defined $w;
        $off += $w;
    }
    return 1;
}

# Serve one WebSocket connection on $fh (the env's psgix.io); returns the messages echoed.
sub serve {
    my ($env, $fh) = @_;
    # Starman deletes HTTP_CONNECTION from the env (pymaster keeps it); the handshake
    # parser needs it
    local $env->{HTTP_CONNECTION} = $env->{HTTP_CONNECTION} // 'Upgrade';
    my $hs = Protocol::WebSocket::Handshake::Server->new_from_psgi($env);
    $hs->parse('') or die 'bad WebSocket handshake: ' . ($hs->error // '?') . "\n";
    die "incomplete WebSocket handshake\n" unless $hs->is_done;
    _send($fh, $hs->to_string) or return 0;
    my $frame = $hs->build_frame;
    my $echoed = 0;
    while (1) {
        my $r = sysread $fh, my $buf, 65536;
        return $echoed unless $r;
        $frame->append($buf);
        while (defined(my $msg = $frame->next_bytes)) {
            if ($frame->is_close) {
                _send($fh, $hs->build_frame(type => 'close', buffer => $msg)->to_bytes);
                return $echoed;
            }
            next unless $frame->is_text || $frame->is_binary;
            _send($fh, $hs->build_frame(type => $frame->is_text ? 'text' : 'binary',
                                        buffer => $msg)->to_bytes);
            $echoed++;
        }
    }
}

1;
