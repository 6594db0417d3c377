fn main() {
    println!("calsync-operator");
}
