package protocol

// CRC-32C of a concatenation from the CRCs of its parts, so that a large
// payload's checksum can be computed before the frame's header (and its
// sequence number) exists: crc(A || B) = crc(A) · x^(8·len(B)) + crc(B),
// in GF(2) modulo the Castagnoli polynomial. Polynomials are 32-bit words in
// the reflected order of hash/crc32: the bit 1<<31 is x^0.

// castagnoliReflected is the Castagnoli polynomial in reflected order
// (hash/crc32.Castagnoli).
const castagnoliReflected = 0x82f63b78

// xPow2n[n] is x^(2^n) modulo the polynomial.
var xPow2n = func() (t [32]uint32) {
	p := uint32(1) << 30 // x^1
	for n := range t {
		t[n] = p
		p = mulModP(p, p)
	}
	return t
}()

// mulModP returns a·b modulo the polynomial.
func mulModP(a, b uint32) uint32 {
	var prod uint32
	for m := uint32(1) << 31; m != 0; m >>= 1 {
		if a&m != 0 {
			prod ^= b
		}
		if b&1 != 0 {
			b = b>>1 ^ castagnoliReflected
		} else {
			b >>= 1
		}
	}
	return prod
}

// xPowBytes returns x^(8·n) modulo the polynomial: appending n zero bytes
// multiplies a CRC register by it.
func xPowBytes(n uint64) uint32 {
	p := uint32(1) << 31 // x^0
	for k := 3; n != 0; n, k = n>>1, k+1 {
		if n&1 != 0 {
			p = mulModP(xPow2n[k%32], p)
		}
	}
	return p
}

// crcCombine returns the CRC-32C of A || B from crcA = CRC-32C(A),
// crcB = CRC-32C(B) and lenB = len(B), as crc32.Update(0, castagnoli, ...)
// computes them.
func crcCombine(crcA, crcB uint32, lenB int) uint32 {
	if lenB == 0 {
		return crcA // crcB is 0
	}
	return mulModP(xPowBytes(uint64(lenB)), crcA) ^ crcB
}
