//! The gRPC codec of every TailOps service: prost encoding with small initial buffers.
//!
//! tonic's default codec allocates an 8 KiB encode buffer and an 8 KiB decode buffer for every
//! stream up front and keeps them for the stream's life. A controller holds one long-lived
//! stream per agent whose messages are mostly a few hundred bytes, so those 16 KiB were a
//! quarter of its memory per connected agent. The buffers start at 1 KiB here and grow when a
//! larger message passes.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffers.
const INITIAL_BUFFER: usize = 1024;
/// tonic's default: how much encoded data a stream gathers before handing it to HTTP/2.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`INITIAL_BUFFER`]-sized buffers; used by the generated services.
#[derive(Debug, Clone, Copy)]
pub struct CompactCodec<T, U>(PhantomData<fn(T) -> U>);

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
